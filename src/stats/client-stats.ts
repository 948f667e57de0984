/**
 * Counters a client keeps about itself: plain numbers, bumped on the request path and read as
 * a snapshot (undici's ClientStats). Nothing here allocates per request.
 */
import { NBD_CMD } from '../protocol/constants.ts'

export interface StatsSnapshot {
  readonly requests: Readonly<Record<'read' | 'write' | 'flush' | 'trim' | 'cache' | 'writeZeroes' | 'blockStatus', number>>
  readonly bytesRead: number
  readonly bytesWritten: number
  /** Requests the server answered with an error. */
  readonly serverErrors: number
  readonly inFlight: number
  /** Connections established after the first one. */
  readonly reconnects: number
  /** Connect attempts that failed (first connect included). */
  readonly connectFailures: number
  /** Requests sent again after a reconnect. */
  readonly retriedRequests: number
  /** Requests failed because the server stayed away longer than the reconnect delay. */
  readonly failedByDelay: number
  readonly timeouts: number
  /** Reply chunks received, by kind (simple replies count as 'simple'). */
  readonly chunks: Readonly<Record<'simple' | 'data' | 'hole' | 'status' | 'error' | 'none', number>>
}

const COMMANDS = ['read', 'write', 'flush', 'trim', 'cache', 'writeZeroes', 'blockStatus'] as const
const INDEX: Readonly<Record<number, number>> = {
  [NBD_CMD.READ]: 0,
  [NBD_CMD.WRITE]: 1,
  [NBD_CMD.FLUSH]: 2,
  [NBD_CMD.TRIM]: 3,
  [NBD_CMD.CACHE]: 4,
  [NBD_CMD.WRITE_ZEROES]: 5,
  [NBD_CMD.BLOCK_STATUS]: 6
}

export class ClientStats {
  readonly #byCommand = new Float64Array(COMMANDS.length)
  bytesRead = 0
  bytesWritten = 0
  serverErrors = 0
  inFlight = 0
  reconnects = 0
  connectFailures = 0
  retriedRequests = 0
  failedByDelay = 0
  timeouts = 0
  readonly chunks = { simple: 0, data: 0, hole: 0, status: 0, error: 0, none: 0 }

  /** Counts a completed command. */
  completed (type: number, length: number): void {
    const i = INDEX[type]
    if (i === undefined) return
    this.#byCommand[i]!++
    if (type === NBD_CMD.READ) this.bytesRead += length
    else if (type === NBD_CMD.WRITE) this.bytesWritten += length
  }

  snapshot (): StatsSnapshot {
    const requests = Object.fromEntries(COMMANDS.map((name, i) => [name, this.#byCommand[i]!])) as StatsSnapshot['requests']
    return {
      requests,
      bytesRead: this.bytesRead,
      bytesWritten: this.bytesWritten,
      serverErrors: this.serverErrors,
      inFlight: this.inFlight,
      reconnects: this.reconnects,
      connectFailures: this.connectFailures,
      retriedRequests: this.retriedRequests,
      failedByDelay: this.failedByDelay,
      timeouts: this.timeouts,
      chunks: { ...this.chunks }
    }
  }

  /** Sums snapshots (one per connection with multi-conn). */
  static sum (parts: readonly StatsSnapshot[]): StatsSnapshot {
    const total = new ClientStats().snapshot() as { -readonly [K in keyof StatsSnapshot]: StatsSnapshot[K] }
    const requests = { ...total.requests }
    const chunks = { ...total.chunks }
    for (const p of parts) {
      for (const name of COMMANDS) requests[name] += p.requests[name]
      for (const kind of Object.keys(chunks) as Array<keyof typeof chunks>) chunks[kind] += p.chunks[kind]
      for (const key of ['bytesRead', 'bytesWritten', 'serverErrors', 'inFlight', 'reconnects', 'connectFailures', 'retriedRequests', 'failedByDelay', 'timeouts'] as const) {
        total[key] += p[key]
      }
    }
    total.requests = requests
    total.chunks = chunks
    return total
  }
}
