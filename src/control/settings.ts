/**
 * The daemon's run-time settings, and the --config file they can be read from. The file is
 * read at start (command-line flags win) and again on `reconfigure`, which applies it without
 * dropping the mount:
 *
 *   # nbdts mount settings
 *   reconnect-delay = 30s
 *   open-timeout = 0
 *   max-in-flight = 64
 *   log-level = info
 *   control-timeout = 4s
 */
import { readFileNoFollow, UnsafeFileError } from '../util/safe-file.ts'
import { ControlError } from './errors.ts'
import { LOG_LEVEL_WORDS, parseDurationWord, type LogLevelWord } from './grammar.ts'

export interface Settings {
  /** ms */
  reconnectDelay: number
  /** ms */
  openTimeout: number
  maxInFlight: number
  logLevel: LogLevelWord
  /** The control socket's per-request deadline, ms. */
  controlTimeout: number
}

const KEYS = {
  'reconnect-delay': 'reconnectDelay',
  'open-timeout': 'openTimeout',
  'max-in-flight': 'maxInFlight',
  'log-level': 'logLevel',
  'control-timeout': 'controlTimeout'
} as const

/**
 * A config file that could not be used. `where` is `file` or `file:line`, all a client that is
 * not root is shown; the message adds why, in our own words: no text of the file is ever
 * quoted (a config path can be made to point at a file the reader may not see).
 */
export class ConfigFileError extends ControlError {
  readonly where: string
  constructor (where: string, why: string, options?: { cause?: unknown }) {
    super('CTL_BAD_COMMAND', `${where}: ${why}`, options)
    this.where = where
  }
}

export function parseConfigFile (text: string, file: string): Partial<Settings> {
  const settings: Partial<Settings> = {}
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/#.*/, '').trim()
    if (line === '') return
    const where = `${file}:${i + 1}`
    const match = /^([a-z-]+)\s*=\s*(\S+)$/.exec(line)
    if (match === null) throw new ConfigFileError(where, 'expected "key = value"')
    const key = match[1] as keyof typeof KEYS
    const value = match[2]!
    const field = KEYS[key]
    if (field === undefined) throw new ConfigFileError(where, `unknown setting (known: ${Object.keys(KEYS).join(', ')})`)
    switch (field) {
      case 'reconnectDelay':
      case 'openTimeout':
      case 'controlTimeout':
        try {
          settings[field] = parseDurationWord(value)
        } catch {
          throw new ConfigFileError(where, `${key} is not a duration (examples: 30, 30s, 500ms, 2m)`)
        }
        break
      case 'maxInFlight': {
        const n = Number(value)
        if (!Number.isInteger(n) || n < 1 || n > 4096) throw new ConfigFileError(where, 'max-in-flight must be an integer from 1 to 4096')
        settings.maxInFlight = n
        break
      }
      case 'logLevel':
        if (!(LOG_LEVEL_WORDS as readonly string[]).includes(value)) throw new ConfigFileError(where, `log-level must be one of ${LOG_LEVEL_WORDS.join(', ')}`)
        settings.logLevel = value as LogLevelWord
        break
    }
  })
  return settings
}

/** Config files are small; anything bigger is not one. */
const MAX_CONFIG_BYTES = 64 * 1024

/**
 * Reads a config file the way sshd's StrictModes reads its own: opened without following a
 * link at `file`, a regular file with one name, owned by root or by our effective user, and
 * writable by nobody else (no group or other write bit). Whoever could change it could change
 * what a root daemon does.
 */
export function readConfigFile (file: string): string {
  const euid = process.geteuid?.() ?? -1
  try {
    return readFileNoFollow(file, {
      maxBytes: MAX_CONFIG_BYTES,
      check: (stat) => {
        if (stat.uid !== 0 && stat.uid !== euid) return `owned by uid ${stat.uid}; a config file must belong to root${euid === 0 ? '' : ` or to uid ${euid}`}`
        if ((stat.mode & 0o022) !== 0) return `writable by ${(stat.mode & 0o002) !== 0 ? 'everyone' : 'its group'} (mode ${(stat.mode & 0o777).toString(8).padStart(4, '0')}); a config file must be writable by its owner only`
        return undefined
      }
    }).text
  } catch (err) {
    if (err instanceof UnsafeFileError) throw new ConfigFileError(file, err.why, { cause: err })
    const code = (err as NodeJS.ErrnoException).code
    throw new ConfigFileError(file, `cannot read it (${code ?? String(err)})`, { cause: err })
  }
}

export function describeSettings (s: Settings): Record<string, string | number> {
  return {
    'reconnect-delay': `${s.reconnectDelay}ms`,
    'open-timeout': `${s.openTimeout}ms`,
    'max-in-flight': s.maxInFlight,
    'log-level': s.logLevel,
    'control-timeout': `${s.controlTimeout}ms`
  }
}
