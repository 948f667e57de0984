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
 *
 * A range whose write is in doubt (pin: its connection stopped answering and was given up,
 * yet the server may still run it) stays held just as long, but nobody waits for it: waiters
 * that overlap it are refused, and so is every new overlapping request, until it is released.
 */
import { InDoubtError } from '../errors.ts'
import { WaitQueue } from './wait-queue.ts'

export interface HeldRange {
  readonly start: bigint
  readonly end: bigint
}

const overlaps = (a: HeldRange, b: HeldRange): boolean => a.start < b.end && b.start < a.end

export class RangeLock {
  readonly #held = new Set<HeldRange>()
  readonly #pinned = new Set<HeldRange>()
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
    this.#refuseInDoubt(range)
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
    this.#pinned.delete(range)
    if (this.#held.delete(range)) this.#queue.pump()
  }

  /** The held range's write is in doubt: refuse whoever overlaps it, now and until release. */
  pin (range: HeldRange): void {
    if (!this.#held.has(range)) return
    this.#pinned.add(range)
    this.#queue.rejectWhere((w) => overlaps(w, range), (w) => inDoubt(w, range))
  }

  /**
   * A write nobody holds a range for (the write ledger's replay) is in doubt: [start, end) is
   * held and pinned until release(), as pin() does for a held range.
   */
  holdInDoubt (start: bigint, end: bigint): HeldRange {
    const range = { start, end }
    this.#held.add(range)
    this.pin(range)
    return range
  }

  get anyInDoubt (): boolean {
    return this.#pinned.size > 0
  }

  /** Whether [start, end) overlaps a write in doubt. */
  overlapsInDoubt (start: bigint, end: bigint): boolean {
    for (const pinned of this.#pinned) if (start < pinned.end && pinned.start < end) return true
    return false
  }

  #refuseInDoubt (range: HeldRange): void {
    for (const pinned of this.#pinned) if (overlaps(range, pinned)) throw inDoubt(range, pinned)
  }

  #conflicts (range: HeldRange): boolean {
    for (const held of this.#held) if (overlaps(range, held)) return true
    return false
  }
}

function inDoubt (range: HeldRange, pinned: HeldRange): InDoubtError {
  return new InDoubtError(`a write to ${range.start}..${range.end} is refused: an earlier write to ${pinned.start}..${pinned.end} was sent to a server that stopped answering, and may still run there`)
}
