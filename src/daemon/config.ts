/**
 * The daemon's config: TOML (parsed by smol-toml), one section per concern, multipath.conf's
 * shape in TOML's words:
 *
 *   [daemon]                       log-level, control-timeout
 *   [defaults]                     any mount key (words.ts), for every mount
 *   [[mount]]                      uri, file, and any mount key; one section per mount
 *
 * TOML because admins read and diff it, its syntax is a standard with well-kept parsers, and
 * a section can be appended to a file without rewriting (or losing the comments of) the rest.
 * A mount is known by its file: two sections for one file are an error. Every error is
 * `file:line` plus our own words: no text of the file is ever quoted.
 */
import path from 'node:path'
import { parse, stringify, TomlError } from 'smol-toml'
import {
  DAEMON_KEY_WORDS, MOUNT_KEY_WORDS, WordError, describeMountSettings, isDaemonKey, isMountKey, setDaemonKey, setMountKey,
  type DaemonSettings, type MountSettings, type TomlValue
} from '../control/words.ts'
import { parseNbdUri } from '../protocol/uri.ts'
import { ConfigFileError } from './config-file.ts'

/** A mount as a section gives it: only what it says; defaults are applied later (resolve). */
export interface MountSection {
  readonly uri: string
  readonly file: string
  readonly settings: MountSettings
  /** file:line of its [[mount]] header. */
  readonly where: string
}

export interface DaemonConfig {
  readonly daemon: Partial<DaemonSettings>
  readonly defaults: MountSettings
  /** By file, in the file's order. */
  readonly mounts: ReadonlyMap<string, MountSection>
}

export const EMPTY_CONFIG: DaemonConfig = { daemon: {}, defaults: {}, mounts: new Map() }

/** Every setting a mount ends up with: built-in defaults < [defaults] < its own. */
export type ResolvedMountSettings = Required<Pick<MountSettings, 'readonly' | 'name' | 'options' | 'connections' | 'reconnectDelay' | 'openTimeout' | 'maxInFlight'>> & MountSettings

export const BUILT_IN: ResolvedMountSettings = {
  readonly: false,
  name: 'nbd',
  options: [],
  connections: 'auto',
  reconnectDelay: 30_000,
  openTimeout: 0,
  maxInFlight: 64
}

export const DAEMON_DEFAULTS: DaemonSettings = { logLevel: 'info', controlTimeout: 4000 }

export function resolve (defaults: MountSettings, own: MountSettings): ResolvedMountSettings {
  return { ...BUILT_IN, ...defaults, ...own }
}

/** Where each section header and key is, to name a line without quoting it. */
class Lines {
  readonly #lines: string[]
  readonly #file: string
  constructor (text: string, file: string) {
    this.#lines = text.split('\n')
    this.#file = file
  }

  /** The line of the n-th (0-based) header matching `header`. */
  header (header: RegExp, n = 0): number {
    let seen = 0
    for (let i = 0; i < this.#lines.length; i++) {
      if (header.test(this.#lines[i]!) && seen++ === n) return i + 1
    }
    return 0
  }

  /** The line of `key =` at or after `from` (a section's header), before the next header. */
  key (key: string, from: number): number {
    const pattern = new RegExp(`^\\s*["']?${key.replace(/[-]/g, '\\-')}["']?\\s*=`)
    for (let i = Math.max(0, from); i < this.#lines.length; i++) {
      if (from > 0 && /^\s*\[/.test(this.#lines[i]!)) break
      if (pattern.test(this.#lines[i]!)) return i + 1
    }
    return from
  }

  where (line: number): string {
    return line > 0 ? `${this.#file}:${line}` : this.#file
  }
}

const DAEMON_HEADER = /^\s*\[\s*daemon\s*\]/
const DEFAULTS_HEADER = /^\s*\[\s*defaults\s*\]/
const MOUNT_HEADER = /^\s*\[\[\s*mount\s*\]\]/

function isTable (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date)
}

function tomlValue (value: unknown): TomlValue | undefined {
  if (typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean') return value
  if (Array.isArray(value)) return value
  return undefined
}

export function parseConfig (text: string, file: string): DaemonConfig {
  const lines = new Lines(text, file)
  let doc: Record<string, unknown>
  try {
    doc = parse(text) as Record<string, unknown>
  } catch (err) {
    if (!(err instanceof TomlError)) throw err
    // The first line of smol-toml's message is its own words; the rest quotes the file.
    const reason = err.message.split('\n')[0]!.replace(/^Invalid TOML document: /, '')
    throw new ConfigFileError(lines.where(err.line), `not valid TOML (${reason})`)
  }
  for (const section of Object.keys(doc)) {
    if (section !== 'daemon' && section !== 'defaults' && section !== 'mount') {
      throw new ConfigFileError(file, `unknown section or key "${section.replace(/[^\w.-]/g, '?').slice(0, 40)}" at the top level (known: [daemon], [defaults], [[mount]])`)
    }
  }

  const daemon: Partial<DaemonSettings> = {}
  const daemonLine = lines.header(DAEMON_HEADER)
  settingsOf(doc.daemon, 'daemon', lines, daemonLine, (key, value) => {
    if (!isDaemonKey(key)) return `unknown [daemon] setting (known: ${DAEMON_KEY_WORDS.join(', ')})`
    setDaemonKey(daemon, key, value)
    return undefined
  })

  const defaults: MountSettings = {}
  settingsOf(doc.defaults, 'defaults', lines, lines.header(DEFAULTS_HEADER), (key, value) => {
    if (!isMountKey(key)) return `unknown [defaults] setting (known: ${MOUNT_KEY_WORDS.join(', ')})`
    setMountKey(defaults, key, value)
    return undefined
  })

  const mounts = new Map<string, MountSection>()
  const sections = doc.mount === undefined ? [] : doc.mount
  if (!Array.isArray(sections)) throw new ConfigFileError(lines.where(lines.header(/^\s*\[\s*mount\s*\]/)), 'mounts are [[mount]] sections (an array of tables)')
  sections.forEach((section: unknown, n) => {
    const line = lines.header(MOUNT_HEADER, n)
    const where = lines.where(line)
    if (!isTable(section)) throw new ConfigFileError(where, 'a [[mount]] must be a table')
    const settings: MountSettings = {}
    let uri: string | undefined
    let mountFile: string | undefined
    settingsOf(section, 'mount', lines, line, (key, value) => {
      if (key === 'uri' || key === 'file') {
        if (typeof value !== 'string') return `${key} must be a string`
        if (key === 'uri') uri = value
        else mountFile = value
        return undefined
      }
      if (!isMountKey(key)) return `unknown [[mount]] setting (known: uri, file, ${MOUNT_KEY_WORDS.join(', ')})`
      setMountKey(settings, key, value)
      return undefined
    })
    if (uri === undefined) throw new ConfigFileError(where, 'this [[mount]] has no uri')
    if (mountFile === undefined) throw new ConfigFileError(where, 'this [[mount]] has no file')
    try {
      parseNbdUri(uri)
    } catch {
      throw new ConfigFileError(lines.where(lines.key('uri', line)), 'uri is not a valid NBD URI')
    }
    if (!path.isAbsolute(mountFile) || path.normalize(mountFile) !== mountFile || mountFile.length > 1 && mountFile.endsWith('/')) {
      throw new ConfigFileError(lines.where(lines.key('file', line)), 'file must be an absolute, normalised path')
    }
    const earlier = mounts.get(mountFile)
    if (earlier !== undefined) throw new ConfigFileError(where, `a second [[mount]] for the file of ${earlier.where}`)
    mounts.set(mountFile, { uri, file: mountFile, settings, where })
  })
  return { daemon, defaults, mounts }
}

function settingsOf (table: unknown, name: string, lines: Lines, line: number, take: (key: string, value: TomlValue) => string | undefined): void {
  if (table === undefined) return
  if (!isTable(table)) throw new ConfigFileError(lines.where(line), `[${name}] must be a table`)
  for (const [key, raw] of Object.entries(table)) {
    const where = lines.where(lines.key(key, line))
    const value = tomlValue(raw)
    if (value === undefined) throw new ConfigFileError(where, `${key.replace(/[^\w.-]/g, '?').slice(0, 40)}: a table or date is not a value here`)
    let why: string | undefined
    try {
      why = take(key, value)
    } catch (err) {
      if (err instanceof WordError) why = err.message
      else throw err
    }
    if (why !== undefined) throw new ConfigFileError(where, why)
  }
}

/** A [[mount]] section for `add mount ... persist`, in the words the file uses. */
export function mountSectionText (uri: string, file: string, settings: MountSettings, comment: string): string {
  const body = stringify({ uri, file, ...describeMountSettings(settings) })
  return `\n# ${comment}\n[[mount]]\n${body}${body.endsWith('\n') ? '' : '\n'}`
}
