/**
 * The command language, parsed by position: a verb first, then exactly what that verb takes,
 * in order. One parse result is used both to decide whether a client may run the command and
 * to run it, so the two can never disagree (multipathd's CVE-2022-41974 came from checking
 * the first word but dispatching on a sum of all words).
 *
 *   help
 *   show (status | stats | config | connections | clients | requests) [json]
 *   reconnect | disconnect | reconfigure | shutdown
 *   set (reconnect-delay | open-timeout) DURATION      e.g. 30s, 500ms, 2m, or seconds
 *   set max-in-flight COUNT                            1..4096
 *   set log-level (error | warn | info | debug)
 */
import { ControlError } from './errors.ts'

export const SHOW_TOPICS = ['status', 'stats', 'config', 'connections', 'clients', 'requests'] as const
export type ShowTopic = (typeof SHOW_TOPICS)[number]
export const LOG_LEVEL_WORDS = ['error', 'warn', 'info', 'debug'] as const
export type LogLevelWord = (typeof LOG_LEVEL_WORDS)[number]
export const SET_KEYS = ['reconnect-delay', 'open-timeout', 'max-in-flight', 'log-level'] as const
export const ACTIONS = ['reconnect', 'disconnect', 'reconfigure', 'shutdown'] as const

export type Command =
  | { readonly kind: 'help' }
  | { readonly kind: 'show', readonly topic: ShowTopic, readonly json: boolean }
  | { readonly kind: (typeof ACTIONS)[number] }
  | { readonly kind: 'set', readonly key: 'reconnect-delay' | 'open-timeout', readonly ms: number }
  | { readonly kind: 'set', readonly key: 'max-in-flight', readonly count: number }
  | { readonly kind: 'set', readonly key: 'log-level', readonly level: LogLevelWord }

export const VERBS = ['help', 'show', ...ACTIONS, 'set'] as const

/** Only these may be run by any user; everything else changes the daemon and needs root. */
export function isReadOnly (command: Command): boolean {
  return command.kind === 'help' || command.kind === 'show'
}

/**
 * Commands that change settings or the connection run holding the config lock. reconfigure and
 * shutdown only schedule their work (which takes the lock itself), so they answer at once.
 */
export function needsLock (command: Command): boolean {
  return command.kind === 'set' || command.kind === 'reconnect' || command.kind === 'disconnect'
}

export const USAGE = `commands:
  help
  show status|stats|config|connections|clients|requests [json]
  reconnect
  disconnect
  set reconnect-delay DURATION | open-timeout DURATION | max-in-flight COUNT | log-level error|warn|info|debug
  reconfigure
  shutdown`

/** Words separated by blanks; "double quotes" group words. */
export function tokenize (text: string): string[] {
  const tokens: string[] = []
  const pattern = /"([^"]*)"|(\S+)/g
  let match: RegExpExecArray | null
  while ((match = pattern.exec(text)) !== null) tokens.push(match[1] ?? match[2]!)
  if (/"/.test(text.replace(/"[^"]*"/g, ''))) throw new ControlError('CTL_BAD_COMMAND', 'unbalanced double quote')
  return tokens
}

function bad (message: string): never {
  throw new ControlError('CTL_BAD_COMMAND', message)
}

function oneOf<T extends string> (word: string | undefined, allowed: readonly T[], what: string): T {
  if (word === undefined) bad(`missing ${what}: expected ${allowed.join(' | ')}`)
  if (!(allowed as readonly string[]).includes(word)) bad(`unknown ${what} "${word}": expected ${allowed.join(' | ')}`)
  return word as T
}

function end (words: readonly string[], at: number, verb: string): void {
  if (words.length > at) bad(`unexpected "${words[at]}" after ${verb}`)
}

export function parseDurationWord (word: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(word)
  if (match === null) bad(`"${word}" is not a duration (examples: 30, 30s, 500ms, 2m)`)
  const unit = match[2] ?? 's'
  return Math.round(Number(match[1]) * (unit === 'ms' ? 1 : unit === 's' ? 1000 : 60_000))
}

export function parseCommand (text: string): Command {
  const words = tokenize(text)
  const verb = oneOf(words[0], VERBS, 'command')
  switch (verb) {
    case 'help':
      end(words, 1, verb)
      return { kind: 'help' }
    case 'show': {
      const topic = oneOf(words[1], SHOW_TOPICS, 'show topic')
      if (words[2] !== undefined && words[2] !== 'json') bad(`unexpected "${words[2]}" after show ${topic} (only "json" may follow)`)
      end(words, words[2] === 'json' ? 3 : 2, `show ${topic}`)
      return { kind: 'show', topic, json: words[2] === 'json' }
    }
    case 'set':
      return parseSet(words)
    default:
      end(words, 1, verb)
      return { kind: verb }
  }
}

function parseSet (words: readonly string[]): Command {
  const key = oneOf(words[1], SET_KEYS, 'setting')
  const value = words[2]
  if (value === undefined) bad(`set ${key} needs a value`)
  end(words, 3, `set ${key} ${value}`)
  switch (key) {
    case 'reconnect-delay':
    case 'open-timeout':
      return { kind: 'set', key, ms: parseDurationWord(value) }
    case 'max-in-flight': {
      const count = Number(value)
      if (!Number.isInteger(count) || count < 1 || count > 4096) bad(`max-in-flight must be an integer from 1 to 4096, not "${value}"`)
      return { kind: 'set', key, count }
    }
    case 'log-level':
      return { kind: 'set', key, level: oneOf(value, LOG_LEVEL_WORDS, 'log level') }
  }
}

/** Completions for the last word of `line`, for interactive use. */
export function complete (line: string): string[] {
  const words = line.split(/\s+/)
  const current = words.pop() ?? ''
  const before = words.filter((w) => w !== '')
  let candidates: readonly string[] = []
  if (before.length === 0) candidates = VERBS
  else if (before[0] === 'show' && before.length === 1) candidates = SHOW_TOPICS
  else if (before[0] === 'show' && before.length === 2) candidates = ['json']
  else if (before[0] === 'set' && before.length === 1) candidates = SET_KEYS
  else if (before[0] === 'set' && before[1] === 'log-level' && before.length === 2) candidates = LOG_LEVEL_WORDS
  return candidates.filter((c) => c.startsWith(current))
}
