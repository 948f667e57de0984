/**
 * The command language, multipathd's verb–object grammar parsed by position: a verb first,
 * then its object, then exactly what they take, in order. One parse result is used both to
 * decide whether a client may run the command and to run it, so the two can never disagree
 * (multipathd's CVE-2022-41974 came from checking the first word but dispatching on a sum of
 * all words).
 *
 *   help
 *   show (daemon | status | config | clients | mounts | paths) [json]
 *   show metrics
 *   show mount FILE [status | stats | config | connections | requests | paths] [json]
 *   show (stats | connections | requests) [json]          the daemon's only mount
 *   add mount URI FILE [KEY VALUE]... [persist]            KEY: see words.ts (MOUNT_KEYS)
 *   del mount FILE [lazy | force]
 *   set mount FILE KEY VALUE                               reconnect-delay, open-timeout, max-in-flight
 *   set KEY VALUE                                          log-level, control-timeout; or a mount
 *                                                          key for the daemon's only mount
 *   (disconnect | reconnect) [mount FILE]                  without FILE: the only mount
 *   (fail | reinstate | switch) path N [mount FILE]        multipath: take a path out, put it
 *                                                          back, make it the active one
 *   reconfigure
 *   shutdown [lazy | force]
 *
 * FILE and URI are single words; double quotes group a FILE with blanks.
 */
import { ControlError } from './errors.ts'
import {
  DAEMON_KEY_WORDS, LIVE_MOUNT_KEYS, LOG_LEVEL_WORDS, MOUNT_KEY_WORDS, TLS_WORDS, WordError, isDaemonKey, isMountKey,
  setDaemonKey, setMountKey, type DaemonSettings, type MountKey, type MountSettings
} from './words.ts'

export const DAEMON_TOPICS = ['daemon', 'status', 'config', 'clients', 'mounts', 'paths', 'metrics'] as const
export type DaemonTopic = (typeof DAEMON_TOPICS)[number]
export const MOUNT_TOPICS = ['status', 'stats', 'config', 'connections', 'requests', 'paths'] as const
export type MountTopic = (typeof MOUNT_TOPICS)[number]
/** `show TOPIC` for these means the daemon's only mount. */
const ONLY_MOUNT_TOPICS = ['stats', 'connections', 'requests'] as const
export const TEARDOWN_MODES = ['lazy', 'force'] as const
/** refuse: a busy mount stays (and the command fails); lazy: detach, serve until the last close; force: abort its I/O. */
export type TeardownMode = 'refuse' | (typeof TEARDOWN_MODES)[number]

export type Command =
  | { readonly kind: 'help' }
  | { readonly kind: 'show', readonly topic: DaemonTopic, readonly json: boolean }
  | { readonly kind: 'show-mount', readonly file: string | undefined, readonly topic: MountTopic, readonly json: boolean }
  | { readonly kind: 'add', readonly uri: string, readonly file: string, readonly settings: MountSettings, readonly persist: boolean }
  | { readonly kind: 'del', readonly file: string, readonly mode: TeardownMode }
  | { readonly kind: 'set', readonly file: string | undefined, readonly settings: MountSettings }
  | { readonly kind: 'set-daemon', readonly settings: Partial<DaemonSettings> }
  | { readonly kind: 'reconnect' | 'disconnect', readonly file: string | undefined }
  | { readonly kind: 'path', readonly action: PathAction, readonly path: number, readonly file: string | undefined }
  | { readonly kind: 'reconfigure' }
  | { readonly kind: 'shutdown', readonly mode: TeardownMode }

export const PATH_ACTIONS = ['fail', 'reinstate', 'switch'] as const
export type PathAction = (typeof PATH_ACTIONS)[number]

export const VERBS = ['help', 'show', 'add', 'del', 'set', 'disconnect', 'reconnect', ...PATH_ACTIONS, 'reconfigure', 'shutdown'] as const

/** Only these may be run by any user; everything else changes the daemon and needs root. */
export function isReadOnly (command: Command): boolean {
  return command.kind === 'help' || command.kind === 'show' || command.kind === 'show-mount'
}

/**
 * Commands that change mounts or settings run holding the config lock. reconfigure and
 * shutdown only schedule their work (which takes the lock itself), so they answer at once.
 */
export function needsLock (command: Command): boolean {
  return !isReadOnly(command) && command.kind !== 'reconfigure' && command.kind !== 'shutdown'
}

export const USAGE = `commands:
  help
  show daemon|status|config|clients|mounts|paths [json]
  show metrics
  show mount FILE [status|stats|config|connections|requests|paths] [json]
  show stats|connections|requests [json]          (the only mount)
  add mount URI FILE [KEY VALUE]... [persist]
      KEY: ${MOUNT_KEY_WORDS.join(', ')}
  del mount FILE [lazy|force]
  set mount FILE ${LIVE_MOUNT_KEYS.join('|')} VALUE
  set ${DAEMON_KEY_WORDS.join('|')} VALUE           (or a mount key, for the only mount)
  disconnect [mount FILE]
  reconnect [mount FILE]
  fail|reinstate|switch path N [mount FILE]      (a mount with several paths)
  reconfigure
  shutdown [lazy|force]`

/** Words separated by blanks; "double quotes" group words. */
export function tokenize (text: string): string[] {
  const tokens: string[] = []
  const pattern = /"([^"]*)"|(\S+)/g
  let match: RegExpExecArray | null
  while ((match = pattern.exec(text)) !== null) tokens.push(match[1] ?? match[2]!)
  if (/"/.test(text.replace(/"[^"]*"/g, ''))) throw new ControlError('CTL_BAD_COMMAND', 'unbalanced double quote')
  return tokens
}

/** Words back into one command line (tokenize's inverse): words with blanks are quoted. */
export function joinWords (words: readonly string[]): string {
  return words.map((w) => /\s/.test(w) || w === '' ? `"${w}"` : w).join(' ')
}

function bad (message: string): never {
  throw new ControlError('CTL_BAD_COMMAND', message)
}

function oneOf<T extends string> (word: string | undefined, allowed: readonly T[], what: string): T {
  if (word === undefined) bad(`missing ${what}: expected ${allowed.join(' | ')}`)
  if (!(allowed as readonly string[]).includes(word)) bad(`unknown ${what} "${word}": expected ${allowed.join(' | ')}`)
  return word as T
}

function end (words: readonly string[], at: number, what: string): void {
  if (words.length > at) bad(`unexpected "${words[at]}" after ${what}`)
}

function value (words: readonly string[], at: number, what: string): string {
  const word = words[at]
  if (word === undefined) bad(`${what} needs a value`)
  return word
}

/** `mount FILE` at `at`; the FILE must be absolute (the daemon's working directory is not the client's). */
function mountFile (words: readonly string[], at: number, verb: string): string {
  oneOf(words[at], ['mount'], `object of ${verb}`)
  const file = value(words, at + 1, `${verb} mount`)
  if (!file.startsWith('/')) bad(`${verb} mount: the file must be an absolute path`)
  return file
}

function json (words: readonly string[], at: number, what: string): boolean {
  if (words[at] !== undefined && words[at] !== 'json') bad(`unexpected "${words[at]}" after ${what} (only "json" may follow)`)
  end(words, words[at] === 'json' ? at + 1 : at, what)
  return words[at] === 'json'
}

function teardown (words: readonly string[], at: number, what: string): TeardownMode {
  const word = words[at]
  if (word === undefined) return 'refuse'
  const mode = oneOf(word, TEARDOWN_MODES, `mode of ${what}`)
  end(words, at + 1, `${what} ${mode}`)
  return mode
}

/** A value error from words.ts, with the word the client typed. */
function withWord<T> (word: string, parse: () => T): T {
  try {
    return parse()
  } catch (err) {
    if (err instanceof WordError) bad(`${err.message} (not "${word}")`)
    throw err
  }
}

export function parseCommand (text: string): Command {
  const words = tokenize(text)
  const verb = oneOf(words[0], VERBS, 'command')
  switch (verb) {
    case 'help':
      end(words, 1, verb)
      return { kind: 'help' }
    case 'show': return parseShow(words)
    case 'add': return parseAdd(words)
    case 'del': {
      const file = mountFile(words, 1, verb)
      return { kind: 'del', file, mode: teardown(words, 3, `del mount ${file}`) }
    }
    case 'set': return parseSet(words)
    case 'disconnect':
    case 'reconnect': {
      if (words.length === 1) return { kind: verb, file: undefined }
      const file = mountFile(words, 1, verb)
      end(words, 3, `${verb} mount ${file}`)
      return { kind: verb, file }
    }
    case 'fail':
    case 'reinstate':
    case 'switch': {
      oneOf(words[1], ['path'], `object of ${verb}`)
      const number = value(words, 2, `${verb} path`)
      if (!/^[1-9]\d{0,2}$/.test(number)) bad(`${verb} path: N is a path number (1, 2, ...), not "${number}"`)
      if (words.length === 3) return { kind: 'path', action: verb, path: Number(number), file: undefined }
      const file = mountFile(words, 3, `${verb} path ${number}`)
      end(words, 5, `${verb} path ${number} mount ${file}`)
      return { kind: 'path', action: verb, path: Number(number), file }
    }
    case 'reconfigure':
      end(words, 1, verb)
      return { kind: verb }
    case 'shutdown':
      return { kind: verb, mode: teardown(words, 1, verb) }
  }
}

function parseShow (words: readonly string[]): Command {
  const topic = oneOf(words[1], [...DAEMON_TOPICS, 'mount', ...ONLY_MOUNT_TOPICS], 'show topic')
  if (topic === 'mount') {
    const file = mountFile(words, 1, 'show')
    const sub = words[3] === undefined || words[3] === 'json' ? 'status' : oneOf(words[3], MOUNT_TOPICS, 'mount topic')
    const at = words[3] === undefined || words[3] === 'json' ? 3 : 4
    return { kind: 'show-mount', file, topic: sub, json: json(words, at, `show mount ${file} ${sub}`) }
  }
  if (topic === 'metrics') {
    end(words, 2, 'show metrics')
    return { kind: 'show', topic, json: false }
  }
  if ((ONLY_MOUNT_TOPICS as readonly string[]).includes(topic)) {
    return { kind: 'show-mount', file: undefined, topic: topic as MountTopic, json: json(words, 2, `show ${topic}`) }
  }
  return { kind: 'show', topic: topic as DaemonTopic, json: json(words, 2, `show ${topic}`) }
}

function parseAdd (words: readonly string[]): Command {
  oneOf(words[1], ['mount'], 'object of add')
  const uri = value(words, 2, 'add mount')
  const file = value(words, 3, `add mount ${uri}`)
  if (!file.startsWith('/')) bad('add mount: the file must be an absolute path')
  const settings: MountSettings = {}
  const seen = new Set<string>()
  let persist = false
  for (let at = 4; at < words.length; at += 2) {
    const key = words[at]!
    if (key === 'persist' && at === words.length - 1) {
      persist = true
      break
    }
    if (!isMountKey(key)) bad(`unknown mount setting "${key}": expected ${MOUNT_KEY_WORDS.join(' | ')}, or persist at the end`)
    const word = value(words, at + 1, key)
    if (key === 'paths') {
      // Repeatable: one URI each time.
      settings.paths = [...(settings.paths ?? []), withWord(word, () => { setMountKey({}, key, word); return word })]
      continue
    }
    if (seen.has(key)) bad(`${key} is given twice`)
    seen.add(key)
    withWord(word, () => { setMountKey(settings, key, key === 'options' ? word.split(',') : word) })
  }
  return { kind: 'add', uri, file, settings, persist }
}

function parseSet (words: readonly string[]): Command {
  if (words[1] === 'mount') {
    const file = mountFile(words, 1, 'set')
    const key = oneOf(words[3], LIVE_MOUNT_KEYS, 'setting of a running mount')
    return { kind: 'set', file, settings: mountSetting(words, key, 4) }
  }
  const key = oneOf(words[1], [...DAEMON_KEY_WORDS, ...LIVE_MOUNT_KEYS], 'setting')
  if (isDaemonKey(key)) {
    const word = value(words, 2, `set ${key}`)
    end(words, 3, `set ${key} ${word}`)
    const settings: Partial<DaemonSettings> = {}
    withWord(word, () => { setDaemonKey(settings, key, word) })
    return { kind: 'set-daemon', settings }
  }
  return { kind: 'set', file: undefined, settings: mountSetting(words, key, 2) }
}

function mountSetting (words: readonly string[], key: MountKey, at: number): MountSettings {
  const word = value(words, at, `set ${key}`)
  end(words, at + 1, `set ${key} ${word}`)
  const settings: MountSettings = {}
  withWord(word, () => { setMountKey(settings, key, word) })
  return settings
}

/** What may follow a setting's key, for completion. */
function valuesOf (key: string): readonly string[] {
  if (key === 'log-level') return LOG_LEVEL_WORDS
  if (key === 'tls') return TLS_WORDS
  if (key === 'readonly' || key === 'tls-verify-peer') return ['yes', 'no']
  if (key === 'connections') return ['auto']
  return []
}

/**
 * Completions for the last word of `line`, for interactive use. `files` are the daemon's
 * mounts (what may follow `mount`).
 */
export function complete (line: string, files: readonly string[] = []): string[] {
  const words = line.split(/\s+/)
  const current = words.pop() ?? ''
  const w = words.filter((x) => x !== '')
  const n = w.length
  let candidates: readonly string[] = []
  const verb = w[0]
  if (n === 0) candidates = VERBS
  else if (verb === 'show') {
    if (n === 1) candidates = [...DAEMON_TOPICS, 'mount', ...ONLY_MOUNT_TOPICS]
    else if (w[1] === 'mount' && n === 2) candidates = files
    else if (w[1] === 'mount' && n === 3) candidates = [...MOUNT_TOPICS, 'json']
    else if (w[1] === 'mount' && n === 4 && w[3] !== 'json') candidates = ['json']
    else if (w[1] !== 'mount' && w[1] !== 'metrics' && n === 2) candidates = ['json']
  } else if (verb === 'add') {
    if (n === 1) candidates = ['mount']
    else if (n >= 4 && n % 2 === 0) candidates = [...MOUNT_KEY_WORDS.filter((k) => k === 'paths' || !w.includes(k)), 'persist']
    else if (n >= 5 && n % 2 === 1) candidates = valuesOf(w[n - 1]!)
  } else if (verb === 'del' || verb === 'disconnect' || verb === 'reconnect') {
    if (n === 1) candidates = ['mount']
    else if (n === 2 && w[1] === 'mount') candidates = files
    else if (n === 3 && verb === 'del') candidates = TEARDOWN_MODES
  } else if (verb === 'set') {
    if (n === 1) candidates = ['mount', ...DAEMON_KEY_WORDS, ...LIVE_MOUNT_KEYS]
    else if (w[1] === 'mount' && n === 2) candidates = files
    else if (w[1] === 'mount' && n === 3) candidates = LIVE_MOUNT_KEYS
    else if (w[1] !== 'mount' && n === 2) candidates = valuesOf(w[1]!)
  } else if (verb === 'fail' || verb === 'reinstate' || verb === 'switch') {
    if (n === 1) candidates = ['path']
    else if (n === 3) candidates = ['mount']
    else if (n === 4 && w[3] === 'mount') candidates = files
  } else if (verb === 'shutdown' && n === 1) candidates = TEARDOWN_MODES
  return candidates.filter((c) => c.startsWith(current))
}

