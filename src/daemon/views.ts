/**
 * What `show` answers, as data (`json`) and as text: the mounts table, one mount's topics, the
 * daemon. Everything here reads counters and states; nothing waits on a mount.
 *
 * What clients that are not root see: where each mount is and how it is doing, but not how it
 * authenticates nor what it is reading. One public form for every view:
 *
 *   URIs            without user and query, wherever they appear (the mount's, each path's, the
 *                   `paths` setting): `nbds://host/export?…` (the query may name key files, the
 *                   user part a PSK identity)
 *   TLS settings    "(hidden)"
 *   errors          class and code only (publicError): "TlsError (NBD_ERR_TLS)", never the
 *                   message, which may name the PSK identity or the key file; so are checker
 *                   results and path failures
 *   requests        how many are in flight, not their offsets and lengths
 *   reconfigure     a failed one shows only the file and line (config-file.ts)
 */
import { describeMountSettings } from '../control/words.ts'
import { humanSize } from '../util/json.ts'
import { printable } from '../util/printable.ts'
import type { Daemon } from './daemon.ts'
import { describeListen } from './metrics.ts'
import type { MountRuntime } from './mount-runtime.ts'

export function redactUri (uri: string): string {
  const query = uri.indexOf('?')
  const base = query < 0 ? uri : uri.slice(0, query)
  return base.replace(/^([a-z+]+:\/\/)[^/@]*@/i, '$1') + (query < 0 ? '' : '?…')
}

const SHORT_STATE: Readonly<Record<string, string>> = { CONNECTED: 'ok', CONNECTING_WAIT: 'wait', CONNECTING_NOWAIT: 'nowait', QUIT: 'quit' }

export interface MountRow {
  readonly file: string
  readonly uri: string
  readonly state: string
  readonly connections: readonly string[]
  readonly size: number | null
  readonly iops: number
  readonly mibps: number
  readonly p99ms: number | null
  readonly inFlight: number
  readonly origin: string
  /** Multipath: each path as "N state", with "(active)" on the one carrying I/O. */
  readonly paths?: readonly string[]
  readonly error?: string
}

function round (n: number, digits: number): number {
  const f = 10 ** digits
  return Math.round(n * f) / f
}

export function mountRow (m: MountRuntime, privileged: boolean): MountRow {
  const client = m.client
  const stats = client?.stats()
  const p99 = m.latency.percentile(0.99)
  const size = client?.sizeBigInt
  return {
    file: m.file,
    uri: privileged ? m.uri : redactUri(m.uri),
    state: m.state,
    connections: client?.states() ?? [],
    size: size === undefined ? null : Number(size),
    iops: round(m.rates.rates.iops, 1),
    mibps: round(m.rates.rates.mibps, 2),
    p99ms: p99 === undefined ? null : round(p99, 3),
    inFlight: stats?.inFlight ?? 0,
    origin: m.origin,
    ...(client !== undefined && client.paths().length > 0 && { paths: client.paths().map((p) => `${p.path} ${p.state}${p.active ? ' (active)' : ''}`) }),
    ...(m.lastError !== undefined && { error: privileged ? m.lastError : m.lastPublicError ?? 'Error' })
  }
}

function latencyText (ms: number | null): string {
  if (ms === null) return '-'
  return ms < 1 ? `${Math.round(ms * 1000)}us` : ms < 1000 ? `${round(ms, 1)}ms` : `${round(ms / 1000, 2)}s`
}

/** The `show mounts` table: one line per mount, columns padded to fit. */
export function mountsTable (rows: readonly MountRow[]): string {
  const header = ['FILE', 'URI', 'STATE', 'CONNECTIONS', 'SIZE', 'IOPS', 'MiB/s', 'P99', 'IN FLIGHT']
  const lines = rows.map((r) => [
    r.file, r.uri, r.state,
    r.connections.length === 0 ? '-' : r.connections.map((s) => SHORT_STATE[s] ?? s).join(','),
    r.size === null ? '-' : humanSize(r.size),
    r.iops.toFixed(0), r.mibps.toFixed(1), latencyText(r.p99ms), String(r.inFlight)
  ].map((cell) => printable(cell)))
  const all = [header, ...lines]
  const widths = header.map((_h, i) => Math.max(...all.map((cells) => cells[i]!.length)))
  const text = all.map((cells) => cells.map((cell, i) => i === cells.length - 1 ? cell : cell.padEnd(widths[i]!)).join('  ').trimEnd())
  const errors = rows.filter((r) => r.error !== undefined).map((r) => `${printable(r.file)}: ${printable(r.error!)}`)
  const paths = rows.filter((r) => r.paths !== undefined).map((r) => `${printable(r.file)}: paths ${printable(r.paths!.join(' · '))}`)
  return [...text, ...(paths.length === 0 ? [] : ['', ...paths]), ...(errors.length === 0 ? [] : ['', ...errors])].join('\n')
}

/** Settings as users other than root see them: TLS hidden, every URI (`paths`) redacted. */
function publicSettings (settings: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(settings)) {
    out[key] = key.startsWith('tls')
      ? '(hidden)'
      : key === 'paths' && Array.isArray(value) ? value.map((uri) => redactUri(String(uri))) : value
  }
  return out
}

/** `show mount FILE TOPIC`. */
export function mountTopic (m: MountRuntime, topic: string, privileged: boolean): unknown {
  const client = m.client
  const mount = m.mount
  switch (topic) {
    case 'status':
      return {
        file: m.file,
        export: mount?.file,
        uri: privileged ? m.uri : redactUri(m.uri),
        state: m.state,
        ...(m.lastError !== undefined && { error: privileged ? m.lastError : m.lastPublicError ?? 'Error' }),
        origin: m.origin,
        access: mount === undefined ? undefined : mount.readonly ? 'read-only' : 'read-write',
        exportSize: client?.sizeBigInt,
        exportSizeHuman: client === undefined ? undefined : humanSize(client.sizeBigInt),
        connections: client?.states().join(' '),
        protocol: client === undefined ? undefined : `${client.info.protocol}, ${client.info.mode} replies, ${client.info.tls ? 'with' : 'without'} TLS`,
        uptimeSeconds: Math.round((Date.now() - m.startedAt) / 1000)
      }
    case 'stats':
      return {
        rates: m.rates.rates,
        latencyMs: { p50: m.latency.percentile(0.5) ?? null, p90: m.latency.percentile(0.9) ?? null, p99: m.latency.percentile(0.99) ?? null },
        client: client?.stats(),
        fuse: mount?.stats
      }
    case 'config': {
      const settings = describeMountSettings(m.settings)
      return { uri: privileged ? m.uri : redactUri(m.uri), file: m.file, origin: m.origin, ...(privileged ? settings : publicSettings(settings)) }
    }
    case 'connections': {
      const connections = client?.connectionInfo() ?? []
      // Only the message is kept per connection (the pool has no error object): hidden whole.
      return privileged ? connections : connections.map((c) => ({ ...c, lastError: c.lastError === undefined ? undefined : '(hidden: root sees the message)' }))
    }
    case 'requests': {
      // Offsets and lengths say what root's mount is reading and writing: root's to see.
      const nbd = client?.requestsInFlight({ bigint: true }) ?? []
      return { fuseInFlight: mount?.stats.inFlight ?? 0, ...(privileged ? { nbd } : { nbdInFlight: nbd.length }) }
    }
    case 'paths':
      return pathRows(m, privileged)
  }
  return undefined
}

export interface PathRow {
  readonly file: string
  readonly path: number
  readonly uri: string
  readonly state: string
  readonly role: 'active' | 'standby'
  readonly connections: number
  readonly checker: string
  readonly checkedAt: string | undefined
  readonly lastFailure: string | undefined
  readonly lastFailureAt: string | undefined
}

/** A mount's paths (multipath): one row each; none for a mount with one URI. */
export function pathRows (m: MountRuntime, privileged: boolean): PathRow[] {
  const paths = m.client?.paths() ?? []
  return paths.map((p) => ({
    file: m.file,
    path: p.path,
    uri: privileged ? p.uri : redactUri(p.uri),
    state: p.state,
    role: p.active ? 'active' : 'standby',
    connections: p.connections,
    checker: privileged ? p.checker : p.publicChecker,
    checkedAt: p.checkedAt,
    lastFailure: privileged ? p.lastFailure?.reason : p.lastFailure?.publicReason,
    lastFailureAt: p.lastFailure?.at
  }))
}

/** "4s ago", "3m ago": the table's times, read at a glance (json keeps the timestamps). */
function ago (iso: string | undefined, now: number): string {
  if (iso === undefined) return ''
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000))
  return s < 120 ? `${s}s ago` : s < 7200 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`
}

/** The `show paths` table: every path of every mount with several. */
export function pathsTable (rows: readonly PathRow[]): string {
  const header = ['FILE', 'PATH', 'URI', 'STATE', 'ROLE', 'CONNECTIONS', 'CHECKER', 'LAST FAILURE']
  const now = Date.now()
  const lines = rows.map((r) => [r.file, String(r.path), r.uri, r.state, r.role, String(r.connections), r.checker,
    r.lastFailure === undefined ? '-' : `${ago(r.lastFailureAt, now)}: ${r.lastFailure}`].map((c) => printable(c)))
  const all = [header, ...lines]
  const widths = header.map((_h, i) => Math.max(...all.map((cells) => cells[i]!.length)))
  return all.map((cells) => cells.map((cell, i) => i === cells.length - 1 ? cell : cell.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n')
}

/** `show daemon` (and the head of `show status` and `show config`). */
export function daemonInfo (d: Daemon, privileged: boolean): Record<string, unknown> {
  return {
    pid: process.pid,
    uptimeSeconds: Math.round((Date.now() - d.startedAt) / 1000),
    'control-socket': d.controlSocket,
    'config-file': d.configFile ?? '(none)',
    'metrics-listen': d.metricsListen === undefined ? '(none)' : describeListen(d.metricsListen),
    'log-level': d.settings.logLevel,
    'control-timeout': `${d.settings.controlTimeout}ms`,
    reconfigures: d.reconfigures,
    'last-reconfigure': privileged ? d.lastReconfigure.text : d.lastReconfigure.public,
    mounts: d.summary()
  }
}

export function daemonConfig (d: Daemon, privileged: boolean): Record<string, unknown> {
  const defaults = describeMountSettings(d.config.defaults)
  return {
    ...daemonInfo(d, privileged),
    defaults: privileged ? defaults : publicSettings(defaults),
    mount: [...d.mounts.values()].map((m) => mountTopic(m, 'config', privileged))
  }
}

/**
 * A readable rendering: "key: value" lines; arrays as one block per element. Values may quote
 * the server (error messages): control characters are escaped, so one value stays one line.
 */
export function render (data: unknown, indent = ''): string {
  if (Array.isArray(data)) {
    if (data.length === 0) return `${indent}(none)`
    if (data.every((item) => typeof item !== 'object' || item === null)) return `${indent}${data.map((item) => printable(String(item))).join(', ')}`
    return data.map((item) => render(item, indent)).join('\n\n')
  }
  if (typeof data !== 'object' || data === null) return `${indent}${printable(String(data))}`
  return Object.entries(data).filter(([, value]) => value !== undefined).map(([key, value]) => {
    if (typeof value === 'object' && value !== null && !(Array.isArray(value) && value.every((v) => typeof v !== 'object'))) {
      return `${indent}${key}:\n${render(value, indent + '  ')}`
    }
    if (Array.isArray(value)) return `${indent}${key}: ${value.length === 0 ? '(none)' : value.map((v) => printable(String(v))).join(', ')}`
    return `${indent}${key}: ${printable(typeof value === 'bigint' ? value.toString() : String(value))}`
  }).join('\n')
}
