/**
 * The daemon's metrics in the Prometheus text format, through prom-client: `show metrics` on
 * the control socket, and `--metrics-listen HOST:PORT` serving the same at /metrics.
 *
 * Counters and gauges are read from each mount's client when scraped (collect): nothing runs
 * between scrapes. Only the latency histogram is fed per request (through the timed client),
 * by a child per mount and command made once.
 *
 *   nbdts_requests_total{mount,command}        nbdts_bytes_total{mount,direction}
 *   nbdts_request_duration_seconds{mount,command}  (histogram)
 *   nbdts_errors_total{mount,kind}             kind: server, timeout, failed_by_delay, fuse, request
 *   nbdts_reconnects_total{mount}              nbdts_in_flight{mount}
 *   nbdts_connection_state{mount,connection,state}   1 for the state each connection is in
 *   nbdts_mount_state{mount,state}             1 for starting, up, failed or removing
 *   nbdts_export_size_bytes{mount}             nbdts_path_state{mount,path,state}, nbdts_path_active{mount,path}
 *   and the process's own (nbdts_process_*, nbdts_nodejs_*)
 *
 * `--metrics-listen /path` serves them on a Unix socket instead (per-user limits, see serveMetrics).
 */
import http from 'node:http'
import type net from 'node:net'
import { performance } from 'node:perf_hooks'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import { loadPeerCredentials, readPeerCredentials } from '../control/peer-credentials.ts'
import { bindSocketFile, releaseSocketFile, type SocketFile } from '../control/socket-file.ts'
import type { StatsSnapshot } from '../stats/client-stats.ts'
import { descriptorLimit, openDescriptors } from '../util/descriptors.ts'
import type { MountRuntime } from './mount-runtime.ts'
import type { TimedCommand } from './timed-client.ts'

const BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
const MOUNT_STATES = ['starting', 'up', 'failed', 'removing'] as const
const PATH_STATES = ['ready', 'failed', 'disabled'] as const

type Observer = (seconds: number) => void

export class DaemonMetrics {
  readonly registry = new Registry()
  readonly #latency: Histogram<'mount' | 'command'>
  readonly #observers = new Map<string, Map<TimedCommand, Observer>>()

  constructor (mounts: () => Iterable<MountRuntime>) {
    const registers = [this.registry]
    collectDefaultMetrics({ register: this.registry, prefix: 'nbdts_' })
    this.#latency = new Histogram({
      name: 'nbdts_request_duration_seconds',
      help: 'Time from a FUSE request reaching the client to its answer, by NBD command',
      labelNames: ['mount', 'command'],
      buckets: BUCKETS,
      registers
    })
    // Every series below is read from the mounts when scraped: one sample per label set.
    type Sample = readonly [labels: readonly string[], value: number]
    const perMount = (kind: 'counter' | 'gauge', name: string, help: string, labels: readonly string[], samples: (m: MountRuntime) => Iterable<Sample>): void => {
      const each = (fn: (labels: string[], n: number) => void): void => {
        for (const m of mounts()) for (const [values, n] of samples(m)) fn([m.file, ...values], n)
      }
      const labelNames = ['mount', ...labels]
      if (kind === 'counter') {
        new Counter({ name, help, labelNames, registers, collect () { this.reset(); each((l, n) => { this.labels(...l).inc(n) }) } })
      } else {
        new Gauge({ name, help, labelNames, registers, collect () { this.reset(); each((l, n) => { this.labels(...l).set(n) }) } })
      }
    }
    const stats = (m: MountRuntime): StatsSnapshot | undefined => m.client?.stats()
    perMount('counter', 'nbdts_requests_total', 'NBD requests completed, by command', ['command'],
      (m) => Object.entries(stats(m)?.requests ?? {}).map(([command, n]) => [[command], n]))
    perMount('counter', 'nbdts_bytes_total', 'Bytes read from and written to the export', ['direction'], (m) => {
      const s = stats(m)
      return s === undefined ? [] : [[['read'], s.bytesRead], [['write'], s.bytesWritten]]
    })
    perMount('counter', 'nbdts_errors_total',
      'Errors: server error replies, request timeouts, requests failed after the reconnect delay, FUSE requests answered with an error, timed requests that failed',
      ['kind'], (m) => {
        const s = stats(m)
        if (s === undefined) return []
        return [[['server'], s.serverErrors], [['timeout'], s.timeouts], [['failed_by_delay'], s.failedByDelay],
          [['fuse'], m.mount?.stats.errors ?? 0], [['request'], m.failedRequests]]
      })
    perMount('counter', 'nbdts_reconnects_total', 'Connections established after the first one', [], (m) => [[[], stats(m)?.reconnects ?? 0]])
    perMount('gauge', 'nbdts_in_flight', 'NBD requests in flight', [], (m) => [[[], stats(m)?.inFlight ?? 0]])
    perMount('gauge', 'nbdts_connection_state', 'Each NBD connection\'s state (1 for the state it is in)', ['connection', 'state'],
      (m) => (m.client?.states() ?? []).map((state, i) => [[String(i + 1), state], 1]))
    perMount('gauge', 'nbdts_mount_state', 'Each mount\'s state in the daemon (1 for the state it is in)', ['state'],
      (m) => MOUNT_STATES.map((state) => [[state], m.state === state ? 1 : 0]))
    perMount('gauge', 'nbdts_path_state', 'Each path of a mount with several (multipath): 1 for the state it is in (ready, failed, disabled)', ['path', 'state'],
      (m) => (m.client?.paths() ?? []).flatMap((p) => PATH_STATES.map((state): Sample => [[String(p.path), state], p.state === state ? 1 : 0])))
    perMount('gauge', 'nbdts_path_active', 'Each path of a mount with several: 1 when it carries I/O (the failover path, or in use in round-robin)', ['path'],
      (m) => (m.client?.paths() ?? []).map((p) => [[String(p.path)], p.active ? 1 : 0]))
    perMount('gauge', 'nbdts_export_size_bytes', 'The export\'s size', [],
      (m) => m.client === undefined ? [] : [[[], Number(m.client.sizeBigInt)]])
  }

  /** What a mount's timed client calls per request. */
  observer (file: string): (command: TimedCommand, seconds: number) => void {
    let children = this.#observers.get(file)
    if (children === undefined) {
      children = new Map()
      this.#observers.set(file, children)
    }
    const own = children
    return (command, seconds) => {
      let observe = own.get(command)
      if (observe === undefined) {
        const child = this.#latency.labels(file, command)
        observe = (s) => { child.observe(s) }
        own.set(command, observe)
      }
      observe(seconds)
    }
  }

  /** A mount is gone: its histogram series go with it. */
  forget (file: string): void {
    const children = this.#observers.get(file)
    this.#observers.delete(file)
    for (const command of children?.keys() ?? []) this.#latency.remove(file, command)
  }

  text (): Promise<string> {
    return this.registry.metrics()
  }
}

/** Where the metrics are served: TCP, or a Unix socket (an absolute path). */
export type MetricsListen = { readonly host: string, readonly port: number } | { readonly path: string }

/** HOST:PORT, [V6]:PORT, or /ABSOLUTE/PATH (a Unix socket). */
export function parseListen (text: string): MetricsListen {
  if (text.startsWith('/')) return { path: text }
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text)
  const port = Number(match?.[3])
  if (match === null || port < 1 || port > 65535) throw new Error(`--metrics-listen takes HOST:PORT (for example 127.0.0.1:9617) or the absolute path of a Unix socket, not ${JSON.stringify(text)}`)
  return { host: match[1] ?? match[2]!, port }
}

export function describeListen (listen: MetricsListen): string {
  return 'path' in listen ? listen.path : `${listen.host}:${listen.port}`
}

/** Connections the metrics listener serves at once; more are closed at accept. */
export const METRICS_MAX_CONNECTIONS = 16
/** On a Unix socket: connections one user other than root may hold (root is not counted). */
export const METRICS_MAX_PER_USER = 4
/** Descriptors the metrics listener leaves free for the control socket, mounts and reconnects. */
export const DESCRIPTOR_RESERVE = 128

export interface MetricsServer {
  readonly server: http.Server
  close: () => Promise<void>
}

/**
 * Serves GET /metrics; resolves once listening. Anyone who can reach the port is a client, so
 * nobody may hold it: at most METRICS_MAX_CONNECTIONS connections, none accepted while fewer
 * than DESCRIPTOR_RESERVE descriptors would be left, 5 s for the headers, 10 s for a request,
 * 5 s idle between requests (Node's own defaults are unlimited connections and minutes). Over
 * TCP a local user can still take the 16 slots and starve the scraper (never the control
 * socket); on a Unix socket (made like the control socket's, mode 0666: its directory decides
 * who reaches it) each user other than root may hold METRICS_MAX_PER_USER, and root is never
 * refused for the others' sake.
 */
export async function serveMetrics (metrics: DaemonMetrics, listen: MetricsListen, log?: (message: string) => void): Promise<MetricsServer> {
  const server = http.createServer({ connectionsCheckingInterval: 1000, headersTimeout: 5000, requestTimeout: 10_000 }, (req, res) => {
    if (req.method !== 'GET' || (req.url !== '/metrics' && req.url !== '/')) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('only GET /metrics here\n')
      return
    }
    metrics.text().then((body) => {
      res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(body)
    }, (err: unknown) => {
      res.writeHead(500, { 'content-type': 'text/plain' }).end(`${(err as Error).message}\n`)
    })
  })
  const unix = 'path' in listen
  // Over TCP the count is all there is; on a Unix socket the per-user counts below bound it.
  if (!unix) server.maxConnections = METRICS_MAX_CONNECTIONS
  // Scrapers hold no connection open for long; an idle one must not keep shutdown waiting.
  server.keepAliveTimeout = 5000
  // A connection that says nothing at all (no headers started) is closed too.
  server.timeout = 10_000
  const limit = descriptorLimit()
  const perUser = new Map<number, number>()
  let others = 0
  let refused = 0
  let lastReport = -Infinity
  const refuse = (socket: net.Socket, why: string): void => {
    socket.destroy()
    refused++
    const now = performance.now()
    if (now - lastReport >= 10_000) {
      log?.(`metrics: ${refused} connection(s) refused: ${why}`)
      refused = 0
      lastReport = now
    }
  }
  if (unix) await loadPeerCredentials()
  server.on('connection', (socket: net.Socket) => {
    const open = openDescriptors()
    if (limit !== undefined && open !== undefined && open > limit - DESCRIPTOR_RESERVE) {
      refuse(socket, `${open} of ${limit} descriptors open, ${DESCRIPTOR_RESERVE} are kept for the control socket and the mounts`)
      return
    }
    if (!unix) return
    const uid = readPeerCredentials(socket)?.uid ?? -1
    if (uid === 0) return
    const held = perUser.get(uid) ?? 0
    if (held >= METRICS_MAX_PER_USER || others >= METRICS_MAX_CONNECTIONS) {
      refuse(socket, `uid ${uid} holds ${held} (at most ${METRICS_MAX_PER_USER} each, ${METRICS_MAX_CONNECTIONS} for all but root)`)
      return
    }
    perUser.set(uid, held + 1)
    others++
    socket.once('close', () => {
      const left = (perUser.get(uid) ?? 1) - 1
      if (left === 0) perUser.delete(uid)
      else perUser.set(uid, left)
      others--
    })
  })
  let file: SocketFile | undefined
  if (unix) {
    file = await bindSocketFile(server, listen.path)
  } else {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(listen.port, listen.host, () => {
        server.off('error', reject)
        resolve()
      })
    })
  }
  return {
    server,
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>((resolve) => { server.close(() => { resolve() }) })
      if (file !== undefined) releaseSocketFile(file)
    }
  }
}
