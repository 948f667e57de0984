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

export function parseConfigFile (text: string, file: string): Partial<Settings> {
  const settings: Partial<Settings> = {}
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/#.*/, '').trim()
    if (line === '') return
    const where = `${file}:${i + 1}`
    const match = /^([a-z-]+)\s*=\s*(\S+)$/.exec(line)
    if (match === null) throw new ControlError('CTL_BAD_COMMAND', `${where}: expected "key = value", got "${raw.trim()}"`)
    const key = match[1] as keyof typeof KEYS
    const value = match[2]!
    const field = KEYS[key]
    if (field === undefined) throw new ControlError('CTL_BAD_COMMAND', `${where}: unknown setting "${match[1]}" (known: ${Object.keys(KEYS).join(', ')})`)
    try {
      switch (field) {
        case 'reconnectDelay':
        case 'openTimeout':
        case 'controlTimeout':
          settings[field] = parseDurationWord(value)
          break
        case 'maxInFlight': {
          const n = Number(value)
          if (!Number.isInteger(n) || n < 1 || n > 4096) throw new Error(`max-in-flight must be an integer from 1 to 4096, not "${value}"`)
          settings.maxInFlight = n
          break
        }
        case 'logLevel':
          if (!(LOG_LEVEL_WORDS as readonly string[]).includes(value)) throw new Error(`log-level must be one of ${LOG_LEVEL_WORDS.join(', ')}`)
          settings.logLevel = value as LogLevelWord
          break
      }
    } catch (err) {
      throw new ControlError('CTL_BAD_COMMAND', `${where}: ${(err as Error).message}`)
    }
  })
  return settings
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
