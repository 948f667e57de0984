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
 *
 * An empty range (length 0) writes nothing: it is granted at once, overlaps nothing and is
 * held by nothing (the engine's gate lets such a request pass in doubt too).
 *
 * Indexed, over numbers (this is on every write's path):
 *
 *   held      ranges granted by tryAcquire/acquire, as sorted spans of numbers (Spans): they
 *             never overlap each other, so one binary search finds a conflict, and insert and
 *             remove shift at most the writes in flight.
 *   pinned    the few in doubt: pinned held ones, and holdInDoubt's (a replay write, which may
 *             overlap held ranges, so it is kept out of `held`). Looked at only when non-empty.
 *   waiting   the wait queue's waiters, as the union of their ranges (Spans, merged), rebuilt
 *             by each pump from the waiters it passes over: a waiter may go iff it overlaps no
 *             held range and no waiter ahead of it (FIFO among overlapping ones: nobody starves),
 *             and a new request may go at once iff it overlaps no held range and no waiter.
 *             A pump costs O(w log w) for w waiters, not O(w²) as a scan of those ahead did.
 *
 * Keys are numbers, exact below 2^53, and rounded so that a range only ever grows (see key()).
 */
import { InDoubtError } from '../errors.ts'
import { WaitQueue } from './wait-queue.ts'

/** A byte offset as callers have it: the engine's commands carry bigints, the fast path numbers. */
export type Offset = bigint | number

export interface HeldRange {
  /** The first byte's key (see startKey). */
  readonly start: number
  /** The key just past the last byte (see endKey); start < end. */
  readonly end: number
  /** The byte offset and length as asked for (for messages). */
  readonly offset: Offset
  readonly length: number
}

const LIMIT = 2 ** 53
const LIMIT_BIG = 1n << 53n

/**
 * Keys are exact below 2^53. At and above it a number cannot hold every integer, so a start
 * is rounded down (every start ≥ 2^53 becomes 2^53) and an end up (every end > 2^53 becomes
 * Infinity): a range's key interval always contains its byte interval, so two ranges that
 * overlap still overlap as keys; ranges up there may only conflict more, never less (they
 * wait for one another although disjoint, which is slower, not wrong). Rounding the other way,
 * or to nearest as Number() does, would be unsafe: near 2^63 numbers are 1024 apart, so
 * [2^63 - 2048, +10) and [2^63 - 2043, +10) would both become [2^63 - 2048, 2^63 - 2048), empty,
 * and two overlapping writes would go to the server together, in either order.
 */
export function startKey (offset: Offset): number {
  if (typeof offset === 'number') return offset < LIMIT ? offset : LIMIT
  return offset < LIMIT_BIG ? Number(offset) : LIMIT
}

/** The end key of `length` bytes from a start key; see startKey. */
export function endKey (start: number, length: number): number {
  // Exact while the sum is below 2^53; a sum that reaches 2^53 may have been rounded (down,
  // 2^53 + 1 → 2^53), so it is taken as past it.
  const end = start + length
  return end < LIMIT ? end : Infinity
}

const FREE = 0
/** In `held` (granted by tryAcquire/acquire). */
const HELD = 1
/** Held by holdInDoubt: only in `pinned`. */
const IN_DOUBT = 2

class Range implements HeldRange {
  readonly start: number
  readonly end: number
  readonly offset: Offset
  readonly length: number
  where: typeof FREE | typeof HELD | typeof IN_DOUBT = FREE
  pinned = false

  constructor (offset: Offset, length: number) {
    this.offset = offset
    this.length = length
    this.start = startKey(offset)
    this.end = endKey(this.start, length)
  }
}

/** Numbers moved at most by a loop rather than copyWithin() (which costs a call, then less). */
const BY_HAND = 24

/**
 * Disjoint [start, end) spans sorted by start, so by end too, as one flat Float64Array
 * (start, end, start, end, ...): a search touches no object, and an insert or a remove moves
 * the spans after it as numbers, storing no pointer (no write barrier). A span overlaps
 * [start, end) iff the first one ending after `start` begins before `end`.
 */
class Spans {
  #at = new Float64Array(32)
  /** Numbers in use: twice the spans. */
  #n = 0

  get size (): number {
    return this.#n >>> 1
  }

  clear (): void {
    this.#n = 0
  }

  overlaps (start: number, end: number): boolean {
    if (this.#n === 0) return false
    const i = this.#firstEndingAfter(start)
    return i < this.#n && this.#at[i]! < end
  }

  /**
   * Where [start, end) would go: the index at which to insert() it, or -1 if it overlaps a
   * span (one search for both the check and the insert).
   */
  place (start: number, end: number): number {
    if (this.#n === 0) return 0
    const i = this.#firstEndingAfter(start)
    return i < this.#n && this.#at[i]! < end ? -1 : i
  }

  /** Adds a span that overlaps none at `i` (from place(), with no change since). */
  insert (i: number, start: number, end: number): void {
    this.#open(i, 2)
    this.#at[i] = start
    this.#at[i + 1] = end
  }

  /** Removes the span that starts at `start` (disjoint spans: only one can). */
  remove (start: number): boolean {
    const i = this.#firstEndingAfter(start)
    const at = this.#at
    const n = this.#n - 2
    if (i > n || at[i] !== start) return false
    if (n - i > BY_HAND) at.copyWithin(i, i + 2, n + 2)
    else for (let j = i; j < n; j++) at[j] = at[j + 2]!
    this.#n = n
    return true
  }

  /** Adds a span, merged with those it overlaps (touching ones stay apart: that is no overlap). */
  add (start: number, end: number): void {
    const at = this.#at
    const i = this.#firstEndingAfter(start)
    let j = i
    let s = start
    let e = end
    while (j < this.#n && at[j]! < end) {
      if (at[j]! < s) s = at[j]!
      if (at[j + 1]! > e) e = at[j + 1]!
      j += 2
    }
    // Spans i..j (exclusive) become one.
    if (j === i) this.#open(i, 2)
    else if (j > i + 2) {
      at.copyWithin(i + 2, j, this.#n)
      this.#n -= j - i - 2
    }
    this.#at[i] = s
    this.#at[i + 1] = e
  }

  /** Makes room for `k` numbers at `i`. */
  #open (i: number, k: number): void {
    if (this.#n + k > this.#at.length) {
      const grown = new Float64Array(this.#at.length * 2)
      grown.set(this.#at.subarray(0, this.#n))
      this.#at = grown
    }
    const at = this.#at
    if (this.#n - i > BY_HAND) at.copyWithin(i + k, i, this.#n)
    else for (let j = this.#n - 1; j >= i; j--) at[j + k] = at[j]!
    this.#n += k
  }

  /** Index (into the flat array) of the first span whose end is past `x`. */
  #firstEndingAfter (x: number): number {
    const at = this.#at
    let lo = 0
    let hi = this.#n >>> 1
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (at[2 * mid + 1]! > x) hi = mid
      else lo = mid + 1
    }
    return 2 * lo
  }
}

export class RangeLock {
  /** Granted ranges (their keys); they never overlap each other. */
  readonly #held = new Spans()
  /** Ranges in doubt (pinned held ones and holdInDoubt's): few, usually none. */
  readonly #pinned: Range[] = []
  /** holdInDoubt's ranges not yet released. */
  #inDoubt = 0
  /** The waiters' ranges ahead of the one a pump looks at; between pumps, every waiter's. */
  readonly #waiting = new Spans()
  readonly #queue = new WaitQueue<Range>({
    grantable: (range) => !this.#conflicts(range) && !this.#waiting.overlaps(range.start, range.end),
    granted: (range) => { this.#insert(range) },
    pumping: () => { this.#waiting.clear() },
    passed: (range) => { this.#waiting.add(range.start, range.end) }
  })

  get held (): number {
    return this.#held.size + this.#inDoubt
  }

  /**
   * The range of `length` bytes at `offset` if it can be held at once (nothing overlapping is
   * held or waiting), else undefined. Throws InDoubtError if it overlaps a write in doubt.
   */
  tryAcquire (offset: Offset, length: number): HeldRange | undefined {
    const range = new Range(offset, length)
    return this.#try(range) ? range : undefined
  }

  /** Resolves with the range once it is held (InDoubtError: it overlaps a write in doubt). */
  async acquire (offset: Offset, length: number, signal?: AbortSignal): Promise<HeldRange> {
    const range = new Range(offset, length)
    if (!this.#try(range)) await this.#queue.wait(range, signal)
    return range
  }

  release (range: HeldRange): void {
    if (!(range instanceof Range) || range.where === FREE) return
    if (range.pinned) {
      range.pinned = false
      this.#pinned.splice(this.#pinned.indexOf(range), 1)
    }
    if (range.where === IN_DOUBT) this.#inDoubt--
    else if (!this.#held.remove(range.start)) throw new Error('internal: a held range is missing from the range lock')
    range.where = FREE
    this.#queue.pump()
  }

  /** The held range's write is in doubt: refuse whoever overlaps it, now and until release. */
  pin (range: HeldRange): void {
    if (!(range instanceof Range) || range.where === FREE) return
    if (!range.pinned) {
      range.pinned = true
      this.#pinned.push(range)
    }
    this.#queue.rejectWhere((w) => overlaps(w, range), (w) => inDoubt(w, range))
  }

  /**
   * A write nobody holds a range for (the write ledger's replay) is in doubt: `length` bytes
   * at `offset` are held and pinned until release(), as pin() does for a held range. They may
   * overlap ranges held already.
   */
  holdInDoubt (offset: Offset, length: number): HeldRange {
    const range = new Range(offset, length)
    if (length === 0) return range
    range.where = IN_DOUBT
    this.#inDoubt++
    this.pin(range)
    return range
  }

  get anyInDoubt (): boolean {
    return this.#pinned.length > 0
  }

  /** Whether `length` bytes at `offset` overlap a write in doubt. */
  overlapsInDoubt (offset: Offset, length: number): boolean {
    if (this.#pinned.length === 0 || length === 0) return false
    const start = startKey(offset)
    const end = endKey(start, length)
    for (const p of this.#pinned) if (start < p.end && p.start < end) return true
    return false
  }

  /** Holds `range` if nothing stops it (it overlaps nothing held or waiting). */
  #try (range: Range): boolean {
    if (range.length === 0) return true
    const pinned = this.#pinned
    if (pinned.length > 0) for (const p of pinned) if (overlaps(range, p)) throw inDoubt(range, p)
    const at = this.#held.place(range.start, range.end)
    if (at < 0 || this.#waiting.overlaps(range.start, range.end)) return false
    this.#held.insert(at, range.start, range.end)
    range.where = HELD
    return true
  }

  #conflicts (range: Range): boolean {
    if (this.#held.overlaps(range.start, range.end)) return true
    const pinned = this.#pinned
    // Waiters that overlap a write in doubt were refused; this is in case one slips through.
    if (pinned.length > 0) for (const p of pinned) if (overlaps(range, p)) return true
    return false
  }

  #insert (range: Range): void {
    this.#held.insert(this.#held.place(range.start, range.end), range.start, range.end)
    range.where = HELD
  }
}

function overlaps (a: HeldRange, b: HeldRange): boolean {
  return a.start < b.end && b.start < a.end
}

function inDoubt (range: HeldRange, pinned: HeldRange): InDoubtError {
  return new InDoubtError(`a write to ${span(range)} is refused: an earlier write to ${span(pinned)} was sent to a server that stopped answering, and may still run there`)
}

function span (range: HeldRange): string {
  const { offset, length } = range
  return `${offset}..${typeof offset === 'bigint' ? offset + BigInt(length) : offset + length}`
}
