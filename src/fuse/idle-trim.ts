/**
 * Memory back after a burst. What a burst leaves resident: the request slots the kernel wrote
 * WRITEs into (128 of max_write + headers: up to ~130 MiB at max_write 1 MiB), the READ slab's
 * slots the replies were read into (read-slab.ts) and the C heap (glibc keeps freed memory).
 * Once no request has come for IDLE_MS after some did, all three are given back: slot and slab
 * pages with MADV_DONTNEED, malloc_trim(0); twice more, IDLE_MS apart, for what V8's
 * garbage collector frees meanwhile. What stays is the steady state (V8's heap, code).
 */
import type { LogFn } from './log.ts'

const IDLE_MS = 5000
/** Idle ticks that trim after a burst: V8 frees its part in the seconds after, to the C heap. */
const TRIMS = 3

export interface Trimmable {
  /** Requests answered so far: activity shows as a change. */
  readonly activity: () => number
  readonly trim: () => void
}

export class IdleTrim {
  readonly #timer: NodeJS.Timeout
  #seen = -1
  /** Trims left before the next burst. */
  #left = 0

  constructor (target: Trimmable, log: LogFn) {
    this.#timer = setInterval(() => {
      const now = target.activity()
      if (now !== this.#seen) {
        this.#seen = now
        this.#left = TRIMS
        return
      }
      if (this.#left === 0) return
      this.#left--
      const before = process.memoryUsage.rss()
      target.trim()
      log('debug', `idle after a burst: gave memory back (rss ${mib(before)} → ${mib(process.memoryUsage.rss())} MiB)`)
    }, IDLE_MS)
    this.#timer.unref()
  }

  stop (): void {
    clearInterval(this.#timer)
  }
}

function mib (bytes: number): number {
  return Math.round(bytes / 1048576)
}
