/**
 * The settings the daemon knows, under one set of names for the command line, the control
 * socket (`add mount ... KEY VALUE`, `set ... KEY VALUE`) and the config file, as multipathd
 * uses multipath.conf's names everywhere. Each key has one parser; the grammar gives it the
 * word a client typed, the config loader a TOML value (a string, a number or a boolean, or an
 * array of strings for `options`).
 *
 * A parser's error says what is wrong in our own words and never quotes the value: a config
 * file can be made to point at a file its reader may not see.
 */
import { ControlError } from './errors.ts'

export const LOG_LEVEL_WORDS = ['error', 'warn', 'info', 'debug'] as const
export type LogLevelWord = (typeof LOG_LEVEL_WORDS)[number]
export const TLS_WORDS = ['off', 'on', 'require'] as const

/** What one mount is given beyond its URI and file; every field optional (defaults fill in). */
export interface MountSettings {
  readonly?: boolean
  /** The export's file name inside a directory mount. */
  name?: string
  /** FUSE `-o` options, one per element (each may hold several, comma-separated). */
  options?: string[]
  connections?: number | 'auto'
  /** ms */
  reconnectDelay?: number
  /** ms */
  openTimeout?: number
  maxInFlight?: number
  tls?: (typeof TLS_WORDS)[number]
  tlsCertificates?: string
  tlsPskFile?: string
  tlsUsername?: string
  tlsHostname?: string
  tlsVerifyPeer?: boolean
  /** More URIs of the same export (multipath), after the mount's own. */
  paths?: string[]
  pathSelector?: (typeof PATH_SELECTOR_WORDS)[number]
  /** 'immediate', 'manual', or a delay in ms. */
  failback?: 'immediate' | 'manual' | number
  /** ms */
  pollingInterval?: number
  /** 'export', 'description', or the bytes whose digest must match on every path. */
  pathIdentity?: 'export' | 'description' | { offset: number, length: number }
}

export const PATH_SELECTOR_WORDS = ['failover', 'round-robin'] as const

/** The daemon's own settings (the config's [daemon] section). */
export interface DaemonSettings {
  logLevel: LogLevelWord
  /** The control socket's per-request deadline, ms. */
  controlTimeout: number
}

export type TomlValue = string | number | boolean | readonly unknown[]

/** A value that is not what its key takes; `why` names the key and never quotes the value. */
export class WordError extends ControlError {
  constructor (why: string) {
    super('CTL_BAD_COMMAND', why)
  }
}

type Parser<T> = (value: TomlValue, key: string) => T

/** A duration: 30, 30s, 500ms, 2m (a bare number is seconds). */
export const duration: Parser<number> = (value, key) => {
  if (typeof value === 'number' && Number.isFinite(value) && value >= 0) return Math.round(value * 1000)
  const match = typeof value === 'string' ? /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(value) : null
  if (match === null) throw new WordError(`${key} is not a duration (examples: 30, 30s, 500ms, 2m)`)
  const unit = match[2] ?? 's'
  return Math.round(Number(match[1]) * (unit === 'ms' ? 1 : unit === 's' ? 1000 : 60_000))
}

function integer (min: number, max: number): Parser<number> {
  return (value, key) => {
    const n = typeof value === 'number' ? value : typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : NaN
    if (!Number.isInteger(n) || n < min || n > max) throw new WordError(`${key} must be an integer from ${min} to ${max}`)
    return n
  }
}

const boolean: Parser<boolean> = (value, key) => {
  if (typeof value === 'boolean') return value
  if (value === 'yes' || value === 'true' || value === 'on') return true
  if (value === 'no' || value === 'false' || value === 'off') return false
  throw new WordError(`${key} must be yes or no`)
}

const text: Parser<string> = (value, key) => {
  if (typeof value !== 'string' || value === '' || value.includes('\0')) throw new WordError(`${key} must be a non-empty string`)
  return value
}

function oneOfWords<T extends string> (words: readonly T[]): Parser<T> {
  return (value, key) => {
    if (typeof value === 'string' && (words as readonly string[]).includes(value)) return value as T
    throw new WordError(`${key} must be one of ${words.join(', ')}`)
  }
}

const list: Parser<string[]> = (value, key) => {
  const items = Array.isArray(value) ? value : [value]
  if (items.length === 0) return []
  return items.map((item) => text(item as TomlValue, key))
}

const connections: Parser<number | 'auto'> = (value, key) => value === 'auto' ? 'auto' : integer(1, 64)(value, `${key} (or auto)`)

const failback: Parser<'immediate' | 'manual' | number> = (value, key) =>
  value === 'immediate' || value === 'manual' ? value : duration(value, `${key} (immediate, manual, or a delay)`)

/** export, description, or OFFSET+LENGTH (bytes) whose SHA-256 must be the same on every path. */
const pathIdentity: Parser<'export' | 'description' | { offset: number, length: number }> = (value, key) => {
  if (value === 'export' || value === 'description') return value
  const match = typeof value === 'string' ? /^(\d+)\+(\d+)$/.exec(value) : null
  if (match === null || Number(match[2]) < 1 || Number(match[2]) > 1 << 20) throw new WordError(`${key} is export, description, or OFFSET+LENGTH (up to 1 MiB)`)
  return { offset: Number(match[1]), length: Number(match[2]) }
}

interface KeySpec<F extends string> {
  readonly field: F
  readonly parse: Parser<unknown>
  /** Applied to a running mount by `set` and reconfigure; the others need a remount. */
  readonly live: boolean
  /** Another name of a field that has its own key (shown under that key only). */
  readonly alias?: true
}

export const MOUNT_KEYS = {
  'readonly': { field: 'readonly', parse: boolean, live: false },
  'name': { field: 'name', parse: text, live: false },
  'options': { field: 'options', parse: list, live: false },
  'connections': { field: 'connections', parse: connections, live: false },
  'reconnect-delay': { field: 'reconnectDelay', parse: duration, live: true },
  'open-timeout': { field: 'openTimeout', parse: duration, live: true },
  'max-in-flight': { field: 'maxInFlight', parse: integer(1, 4096), live: true },
  'tls': { field: 'tls', parse: oneOfWords(TLS_WORDS), live: false },
  'tls-certificates': { field: 'tlsCertificates', parse: text, live: false },
  'tls-psk-file': { field: 'tlsPskFile', parse: text, live: false },
  'tls-username': { field: 'tlsUsername', parse: text, live: false },
  'tls-hostname': { field: 'tlsHostname', parse: text, live: false },
  'tls-verify-peer': { field: 'tlsVerifyPeer', parse: boolean, live: false },
  'paths': { field: 'paths', parse: list, live: false },
  'path-selector': { field: 'pathSelector', parse: oneOfWords(PATH_SELECTOR_WORDS), live: false },
  'failback': { field: 'failback', parse: failback, live: true },
  'polling-interval': { field: 'pollingInterval', parse: duration, live: false },
  'path-identity': { field: 'pathIdentity', parse: pathIdentity, live: false },
  // multipath.conf's name for how long I/O queues with every path down.
  'no-path-retry': { field: 'reconnectDelay', parse: duration, live: true, alias: true }
} as const satisfies Record<string, KeySpec<keyof MountSettings>>
export type MountKey = keyof typeof MOUNT_KEYS
export const MOUNT_KEY_WORDS = Object.keys(MOUNT_KEYS) as MountKey[]
/** What `set` may change on a running mount. */
export const LIVE_MOUNT_KEYS = MOUNT_KEY_WORDS.filter((k) => MOUNT_KEYS[k].live)

export const DAEMON_KEYS = {
  'log-level': { field: 'logLevel', parse: oneOfWords(LOG_LEVEL_WORDS), live: true },
  'control-timeout': { field: 'controlTimeout', parse: duration, live: true }
} as const satisfies Record<string, KeySpec<keyof DaemonSettings>>
export type DaemonKey = keyof typeof DAEMON_KEYS
export const DAEMON_KEY_WORDS = Object.keys(DAEMON_KEYS) as DaemonKey[]

export function isMountKey (word: string): word is MountKey {
  return Object.hasOwn(MOUNT_KEYS, word)
}

export function isDaemonKey (word: string): word is DaemonKey {
  return Object.hasOwn(DAEMON_KEYS, word)
}

/** Sets `key` (a mount key) in `into` from a typed or TOML value. */
export function setMountKey (into: MountSettings, key: MountKey, value: TomlValue): void {
  const spec = MOUNT_KEYS[key]
  ;(into as Record<string, unknown>)[spec.field] = spec.parse(value, key)
}

export function setDaemonKey (into: Partial<DaemonSettings>, key: DaemonKey, value: TomlValue): void {
  const spec = DAEMON_KEYS[key]
  ;(into as Record<string, unknown>)[spec.field] = spec.parse(value, key)
}

/** The kebab-case name of a MountSettings field. */
export function mountKeyOf (field: keyof MountSettings): MountKey {
  return MOUNT_KEY_WORDS.find((k) => MOUNT_KEYS[k].field === field)!
}

/** Settings back into words (for `show ... config` and for writing a config section). */
export function describeMountSettings (s: MountSettings): Record<string, string | number | boolean | string[]> {
  const out: Record<string, string | number | boolean | string[]> = {}
  for (const key of MOUNT_KEY_WORDS) {
    const spec: KeySpec<keyof MountSettings> = MOUNT_KEYS[key]
    const value = (s as Record<string, unknown>)[spec.field]
    if (value === undefined || spec.alias === true) continue
    out[key] = spec.parse === duration || (spec.parse === failback && typeof value === 'number')
      ? `${value as number}ms`
      : typeof value === 'object' && !Array.isArray(value) ? `${(value as { offset: number }).offset}+${(value as { length: number }).length}` : value as string | number | boolean | string[]
  }
  return out
}
