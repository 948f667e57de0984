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
 *   nbdts_export_size_bytes{mount}             and the process's own (nbdts_process_*, nbdts_nodejs_*)
 */
import http from 'node:http'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { MountRuntime } from './mount-runtime.ts'
import type { TimedCommand } from './timed-client.ts'

const BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
const MOUNT_STATES = ['starting', 'up', 'failed', 'removing'] as const

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
    new Counter({
      name: 'nbdts_requests_total',
      help: 'NBD requests completed, by command',
      labelNames: ['mount', 'command'],
      registers,
      collect () {
        this.reset()
        for (const m of mounts()) {
          const stats = m.client?.stats
          if (stats === undefined) continue
          for (const [command, n] of Object.entries(stats.requests)) this.labels(m.file, command).inc(n)
        }
      }
    })
    new Counter({
      name: 'nbdts_bytes_total',
      help: 'Bytes read from and written to the export',
      labelNames: ['mount', 'direction'],
      registers,
      collect () {
        this.reset()
        for (const m of mounts()) {
          const stats = m.client?.stats
          if (stats === undefined) continue
          this.labels(m.file, 'read').inc(stats.bytesRead)
          this.labels(m.file, 'write').inc(stats.bytesWritten)
        }
      }
    })
    new Counter({
      name: 'nbdts_errors_total',
      help: 'Errors: server error replies, request timeouts, requests failed after the reconnect delay, FUSE requests answered with an error, timed requests that failed',
      labelNames: ['mount', 'kind'],
      registers,
      collect () {
        this.reset()
        for (const m of mounts()) {
          const stats = m.client?.stats
          if (stats === undefined) continue
          this.labels(m.file, 'server').inc(stats.serverErrors)
          this.labels(m.file, 'timeout').inc(stats.timeouts)
          this.labels(m.file, 'failed_by_delay').inc(stats.failedByDelay)
          this.labels(m.file, 'fuse').inc(m.mount?.stats.errors ?? 0)
          this.labels(m.file, 'request').inc(m.failedRequests)
        }
      }
    })
    new Counter({
      name: 'nbdts_reconnects_total',
      help: 'Connections established after the first one',
      labelNames: ['mount'],
      registers,
      collect () {
        this.reset()
        for (const m of mounts()) this.labels(m.file).inc(m.client?.stats.reconnects ?? 0)
      }
    })
    new Gauge({
      name: 'nbdts_in_flight',
      help: 'NBD requests in flight',
      labelNames: ['mount'],
      registers,
      collect () {
        this.reset()
        for (const m of mounts()) this.labels(m.file).set(m.client?.stats.inFlight ?? 0)
      }
    })
    new Gauge({
      name: 'nbdts_connection_state',
      help: 'Each NBD connection\'s state (1 for the state it is in)',
      labelNames: ['mount', 'connection', 'state'],
      registers,
      collect () {
        this.reset()
        for (const m of mounts()) {
          m.client?.states.forEach((state, i) => { this.labels(m.file, String(i + 1), state).set(1) })
        }
      }
    })
    new Gauge({
      name: 'nbdts_mount_state',
      help: 'Each mount\'s state in the daemon (1 for the state it is in)',
      labelNames: ['mount', 'state'],
      registers,
      collect () {
        this.reset()
        for (const m of mounts()) {
          for (const state of MOUNT_STATES) this.labels(m.file, state).set(m.state === state ? 1 : 0)
        }
      }
    })
    new Gauge({
      name: 'nbdts_path_state',
      help: 'Each path of a mount with several (multipath): 1 for the state it is in (ready, failed, disabled)',
      labelNames: ['mount', 'path', 'state'],
      registers,
      collect () {
        this.reset()
        for (const m of mounts()) {
          for (const p of m.client?.paths() ?? []) {
            for (const state of ['ready', 'failed', 'disabled']) this.labels(m.file, String(p.path), state).set(p.state === state ? 1 : 0)
          }
        }
      }
    })
    new Gauge({
      name: 'nbdts_path_active',
      help: 'Each path of a mount with several: 1 when it carries I/O (the failover path, or in use in round-robin)',
      labelNames: ['mount', 'path'],
      registers,
      collect () {
        this.reset()
        for (const m of mounts()) for (const p of m.client?.paths() ?? []) this.labels(m.file, String(p.path)).set(p.active ? 1 : 0)
      }
    })
    new Gauge({
      name: 'nbdts_export_size_bytes',
      help: 'The export\'s size',
      labelNames: ['mount'],
      registers,
      collect () {
        this.reset()
        for (const m of mounts()) {
          const client = m.client
          if (client !== undefined) this.labels(m.file).set(Number(client.sizeBigInt))
        }
      }
    })
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

/** HOST:PORT or [V6]:PORT. */
export function parseListen (text: string): { host: string, port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text)
  const port = Number(match?.[3])
  if (match === null || port < 1 || port > 65535) throw new Error(`--metrics-listen takes HOST:PORT (for example 127.0.0.1:9617), not ${JSON.stringify(text)}`)
  return { host: match[1] ?? match[2]!, port }
}

/** Serves GET /metrics; resolves once listening. */
export async function serveMetrics (metrics: DaemonMetrics, listen: { host: string, port: number }): Promise<http.Server> {
  const server = http.createServer((req, res) => {
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
  // Scrapers hold no connection open for long; an idle one must not keep shutdown waiting.
  server.keepAliveTimeout = 5000
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(listen.port, listen.host, () => {
      server.off('error', reject)
      resolve()
    })
  })
  return server
}
