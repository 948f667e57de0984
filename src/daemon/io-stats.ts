/**
 * What `show mounts` and `ctl watch` say about a mount's I/O right now: requests and bytes per
 * second over the last second, and latency percentiles over the last WINDOW seconds. The daemon
 * ticks every mount once a second (one timer for all of them); nothing here allocates per
 * request.
 *
 * Latency goes into log-spaced buckets, four per octave from 1 µs (a value is known to within
 * 19%), one bucket array per second in a ring:
 *
 *   record(ms) ──► seconds[now][bucket]++          tick() ──► now = next; seconds[now].fill(0)
 *   percentile(q) sums the ring's arrays and walks the buckets to the q-th request
 */
import type { StatsSnapshot } from '../stats/client-stats.ts'

const PER_OCTAVE = 4
const BUCKETS = 112
/** Seconds the percentiles look back. */
export const WINDOW = 10

function bucketOf (ms: number): number {
  const us = ms * 1000
  if (us <= 1) return 0
  return Math.min(BUCKETS - 1, Math.floor(Math.log2(us) * PER_OCTAVE))
}

/** The upper bound of bucket i, in ms. */
function upperOf (i: number): number {
  return 2 ** ((i + 1) / PER_OCTAVE) / 1000
}

export class LatencyWindow {
  readonly #seconds = Array.from({ length: WINDOW }, () => new Uint32Array(BUCKETS))
  #now = 0

  record (ms: number): void {
    this.#seconds[this.#now]![bucketOf(ms)]!++
  }

  tick (): void {
    this.#now = (this.#now + 1) % WINDOW
    this.#seconds[this.#now]!.fill(0)
  }

  /** The q-quantile (0 < q ≤ 1) in ms over the window, or undefined when nothing was recorded. */
  percentile (q: number): number | undefined {
    const sum = new Float64Array(BUCKETS)
    let total = 0
    for (const second of this.#seconds) {
      for (let i = 0; i < BUCKETS; i++) {
        sum[i]! += second[i]!
        total += second[i]!
      }
    }
    if (total === 0) return undefined
    const rank = Math.ceil(q * total)
    let seen = 0
    for (let i = 0; i < BUCKETS; i++) {
      seen += sum[i]!
      if (seen >= rank) return upperOf(i)
    }
    return upperOf(BUCKETS - 1)
  }
}

export interface Rates {
  /** Requests per second (every command). */
  readonly iops: number
  /** MiB per second, read and written. */
  readonly mibps: number
  readonly readMibps: number
  readonly writeMibps: number
}

const NO_RATES: Rates = { iops: 0, mibps: 0, readMibps: 0, writeMibps: 0 }

function totalRequests (s: StatsSnapshot): number {
  let n = 0
  for (const value of Object.values(s.requests)) n += value
  return n
}

/** Per-second rates from successive snapshots of a client's counters. */
export class RateSampler {
  #last: { at: number, requests: number, read: number, written: number } | undefined
  rates: Rates = NO_RATES

  sample (stats: StatsSnapshot, at: number): void {
    const now = { at, requests: totalRequests(stats), read: stats.bytesRead, written: stats.bytesWritten }
    const last = this.#last
    this.#last = now
    if (last === undefined || now.at <= last.at) return
    const seconds = (now.at - last.at) / 1000
    const mib = 1024 * 1024
    const readMibps = (now.read - last.read) / mib / seconds
    const writeMibps = (now.written - last.written) / mib / seconds
    this.rates = { iops: (now.requests - last.requests) / seconds, mibps: readMibps + writeMibps, readMibps, writeMibps }
  }
}
