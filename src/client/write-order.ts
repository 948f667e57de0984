/**
 * FLUSH as a full barrier for write-like requests (WRITE, TRIM, WRITE_ZEROES).
 *
 *   writes W1 W2 ──► FLUSH F ──► writes W3 W4
 *   F is sent only once W1 and W2 are acknowledged (the server only makes replied-to writes
 *   durable), and W3/W4 are sent only once F is acknowledged.
 *
 * That makes a reconnect safe without reordering logic of its own: a request retried on the
 * new connection is still inside its admission, so no write can cross an unacknowledged
 * FLUSH in either direction, and a FLUSH is always re-sent after the writes it covers. With
 * several connections it gives the spec's multi-conn rule too (a FLUSH covers writes whose
 * replies arrived before it was sent).
 *
 * Admission is FIFO between the two kinds; consecutive requests of one kind run together.
 * The common case (no FLUSH pending) is a counter increment, without a promise.
 */
import { AbortedError } from '../errors.ts'

type Kind = 'write' | 'flush'

interface Waiter {
  readonly kind: Kind
  readonly resolve: () => void
  readonly reject: (err: unknown) => void
  readonly signal: AbortSignal | undefined
  readonly onAbort: () => void
}

export class WriteOrder {
  #writes = 0
  #flushes = 0
  readonly #queue: Waiter[] = []

  /** Write-like requests admitted and not finished; flushes admitted and not finished. */
  get active (): { writes: number, flushes: number, waiting: number } {
    return { writes: this.#writes, flushes: this.#flushes, waiting: this.#queue.length }
  }

  run<T> (kind: Kind, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    if (this.#queue.length === 0 && this.#fits(kind)) {
      this.#enter(kind)
      return this.#inside(kind, fn)
    }
    return this.#wait(kind, signal).then(() => this.#inside(kind, fn))
  }

  async #inside<T> (kind: Kind, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn()
    } finally {
      if (kind === 'write') this.#writes--
      else this.#flushes--
      this.#pump()
    }
  }

  #fits (kind: Kind): boolean {
    return kind === 'write' ? this.#flushes === 0 : this.#writes === 0
  }

  #enter (kind: Kind): void {
    if (kind === 'write') this.#writes++
    else this.#flushes++
  }

  #wait (kind: Kind, signal: AbortSignal | undefined): Promise<void> {
    if (signal?.aborted === true) return Promise.reject(new AbortedError(signal.reason))
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        kind,
        resolve,
        reject,
        signal,
        onAbort: () => {
          const i = this.#queue.indexOf(waiter)
          if (i >= 0) this.#queue.splice(i, 1)
          reject(new AbortedError(signal?.reason))
          this.#pump()
        }
      }
      signal?.addEventListener('abort', waiter.onAbort, { once: true })
      this.#queue.push(waiter)
    })
  }

  #pump (): void {
    while (this.#queue.length > 0 && this.#fits(this.#queue[0]!.kind)) {
      const waiter = this.#queue.shift()!
      waiter.signal?.removeEventListener('abort', waiter.onAbort)
      this.#enter(waiter.kind)
      waiter.resolve()
    }
  }
}
