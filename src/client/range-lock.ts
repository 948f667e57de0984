/**
 * Byte ranges held by write-like requests (WRITE, TRIM, WRITE_ZEROES) for their whole life on
 * the wire, so that overlapping writes reach the server in the order they were submitted:
 *
 *   write A [=======)              held from grant until A's reply (or its connection's end),
 *   write B      [=======)         waits for A, even when A's caller was told "aborted" early
 *   RMW C             [====)       held across its read, patch and write-back
 *
 * A caller's abort or a timeout may answer the caller before the reply comes; the range stays
 * held until the server can no longer run the command. Grants are FIFO among overlapping
 * requests, so nothing is starved; requests that overlap nothing go at once.
 */
import { WaitQueue } from './wait-queue.ts'

export interface HeldRange {
  readonly start: bigint
  readonly end: bigint
}

const overlaps = (a: HeldRange, b: HeldRange): boolean => a.start < b.end && b.start < a.end

export class RangeLock {
  readonly #held = new Set<HeldRange>()
  readonly #queue = new WaitQueue<HeldRange>({
    grantable: (range, ahead) => !this.#conflicts(range) && !ahead.some((a) => overlaps(a, range)),
    granted: (range) => { this.#held.add(range) }
  })

  get held (): number {
    return this.#held.size
  }

  /** The range if it can be held at once (nothing overlapping is held or waiting), else undefined. */
  tryAcquire (start: bigint, end: bigint): HeldRange | undefined {
    const range = { start, end }
    if (this.#conflicts(range)) return undefined
    if (this.#queue.length > 0 && this.#queue.items().some((w) => overlaps(w, range))) return undefined
    this.#held.add(range)
    return range
  }

  /** Resolves with the range once it is held. */
  async acquire (start: bigint, end: bigint, signal?: AbortSignal): Promise<HeldRange> {
    const now = this.tryAcquire(start, end)
    if (now !== undefined) return now
    const range = { start, end }
    await this.#queue.wait(range, signal)
    return range
  }

  release (range: HeldRange): void {
    if (this.#held.delete(range)) this.#queue.pump()
  }

  #conflicts (range: HeldRange): boolean {
    for (const held of this.#held) if (overlaps(range, held)) return true
    return false
  }
}
