/**
 * One abortable FIFO wait queue, shared by everything in the client that makes a request wait
 * its turn: the range lock, the write order (FLUSH barrier), slot admission and the outage
 * (requests waiting for the server to come back).
 *
 *   wait(item) ──► [ w1 w2 w3 ... ] ──pump()──► granted(item): the waiter's promise resolves
 *                     │   │
 *                     │   └─ abort signal fires ──► removed, rejects with AbortedError
 *                     └──── its deadline passes ──► removed, rejects with expired()'s error
 *
 * The owner decides who may go: `grantable(item, ahead)` sees the waiters still ahead of
 * `item` (FIFO owners grant only the head; the range lock lets a waiter pass others it does not
 * overlap). Owners keep a synchronous fast path of their own (nothing waits and the item fits)
 * so that the common case costs no promise. One timer serves every deadline in the queue.
 *
 * An owner that would rather index the waiters than scan `ahead` (the range lock) is told of
 * each pump (`pumping`) and of each waiter the pump leaves waiting (`passed`, in order): the
 * items passed since the last `pumping` are the waiters ahead of the one being asked about,
 * and once a pump is over they are exactly the queue's waiters, because every change to who
 * waits (a wait, a grant, an abort, a deadline, a rejection) ends with a pump.
 */
import { AbortedError } from '../errors.ts'

interface Entry<T> {
  readonly item: T
  readonly resolve: () => void
  readonly reject: (err: unknown) => void
  readonly signal: AbortSignal | undefined
  readonly onAbort: (() => void) | undefined
  /** performance.now() by which the waiter gives up; Infinity: never. */
  readonly deadline: number
}

export interface WaitQueueOptions<T> {
  /** May `item` go now, with `ahead` still waiting before it? */
  readonly grantable: (item: T, ahead: readonly T[]) => boolean
  /** Called as `item` is granted, before its waiter resumes (take the resource here). */
  readonly granted: (item: T) => void
  /** The error a waiter whose deadline passed is rejected with. */
  readonly expired?: (item: T) => Error
  /** A pump starts: forget the waiters passed before. */
  readonly pumping?: () => void
  /** The pump under way leaves `item` waiting (it is now in `ahead` for the rest). */
  readonly passed?: (item: T) => void
}

export class WaitQueue<T> {
  readonly #options: WaitQueueOptions<T>
  #entries: Array<Entry<T>> = []
  #timer: NodeJS.Timeout | null = null
  #timerAt = Infinity

  constructor (options: WaitQueueOptions<T>) {
    this.#options = options
  }

  get length (): number {
    return this.#entries.length
  }

  /** Everything waiting, in order. */
  items (): T[] {
    return this.#entries.map((e) => e.item)
  }

  /**
   * Resolves once `item` is granted. Rejects with AbortedError when `signal` fires first, or
   * with the owner's `expired` error at `deadline` (a performance.now() value).
   */
  wait (item: T, signal?: AbortSignal, deadline = Infinity): Promise<void> {
    if (signal?.aborted === true) return Promise.reject(new AbortedError(signal.reason))
    return new Promise<void>((resolve, reject) => {
      let entry: Entry<T> | undefined
      const onAbort = signal === undefined
        ? undefined
        : (): void => { if (this.#remove(entry!)) reject(new AbortedError(signal.reason)) }
      entry = { item, resolve, reject, signal, onAbort, deadline }
      signal?.addEventListener('abort', onAbort!, { once: true })
      this.#entries.push(entry)
      if (deadline !== Infinity) this.#arm()
      this.pump()
    })
  }

  /** Grants every waiter that may go now, in order. */
  pump (): void {
    const o = this.#options
    o.pumping?.()
    const entries = this.#entries
    if (entries.length === 0) return
    const ahead: T[] = []
    let kept: Array<Entry<T>> | null = null
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i]!
      if (o.grantable(e.item, ahead)) {
        kept ??= entries.slice(0, i)
        this.#finish(e)
        o.granted(e.item)
        e.resolve()
      } else {
        ahead.push(e.item)
        o.passed?.(e.item)
        kept?.push(e)
      }
    }
    if (kept !== null) this.#entries = kept
    if (this.#entries.length === 0) this.#disarm()
  }

  /** Rejects the waiters whose item matches, each with its own error; the rest may go on. */
  rejectWhere (matches: (item: T) => boolean, error: (item: T) => Error): void {
    const out = this.#entries.filter((e) => matches(e.item))
    if (out.length === 0) return
    this.#entries = this.#entries.filter((e) => !matches(e.item))
    for (const e of out) {
      this.#finish(e)
      e.reject(error(e.item))
    }
    if (this.#entries.length === 0) this.#disarm()
    this.pump()
  }

  /** Rejects every waiter with `err` (the owner is shutting down). */
  rejectAll (err: Error): void {
    const entries = this.#entries
    this.#entries = []
    for (const e of entries) {
      this.#finish(e)
      e.reject(err)
    }
    this.#disarm()
    this.pump()
  }

  #remove (entry: Entry<T>): boolean {
    const i = this.#entries.indexOf(entry)
    if (i < 0) return false
    this.#entries.splice(i, 1)
    this.#finish(entry)
    // Whoever waited behind it may be able to go now.
    this.pump()
    return true
  }

  #finish (entry: Entry<T>): void {
    if (entry.onAbort !== undefined) entry.signal!.removeEventListener('abort', entry.onAbort)
  }

  #arm (): void {
    let next = Infinity
    for (const e of this.#entries) if (e.deadline < next) next = e.deadline
    if (next === this.#timerAt) return
    this.#disarm()
    if (next === Infinity) return
    this.#timerAt = next
    this.#timer = setTimeout(() => { this.#expire() }, Math.max(0, next - performance.now()))
  }

  #disarm (): void {
    if (this.#timer !== null) clearTimeout(this.#timer)
    this.#timer = null
    this.#timerAt = Infinity
  }

  #expire (): void {
    this.#timer = null
    this.#timerAt = Infinity
    const now = performance.now()
    const expired = this.#entries.filter((e) => e.deadline <= now)
    this.#entries = this.#entries.filter((e) => e.deadline > now)
    for (const e of expired) {
      this.#finish(e)
      e.reject(this.#options.expired?.(e.item) ?? new Error('internal: a wait expired without an error for it'))
    }
    this.#arm()
    if (expired.length > 0) this.pump()
  }
}
