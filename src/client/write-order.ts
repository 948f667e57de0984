/**
 * FLUSH as a full barrier for write-like requests (WRITE, TRIM, WRITE_ZEROES), counted by
 * their life on the wire:
 *
 *   writes W1 W2 ──► FLUSH F ──► writes W3 W4
 *   F is sent only once W1 and W2 are done on the wire (the server only makes replied-to writes
 *   durable), and W3/W4 are sent only once F is done.
 *
 * "Done on the wire" is not "the caller's promise settled": a write whose caller aborted, or
 * was answered early by a timeout, still counts until the server answers it or its connection
 * is gone, because the server may still run it. A request retried after a reconnect stays
 * inside its admission, so no write crosses an unanswered FLUSH in either direction, and a
 * FLUSH is re-sent only after the writes it covers. With several connections this is the
 * spec's multi-conn rule too (a FLUSH covers writes whose replies arrived before it was sent).
 *
 * Admission is FIFO between the two kinds; consecutive requests of one kind go together. The
 * common case (no FLUSH pending) is a counter increment, without a promise.
 *
 * A write in doubt (its connection stopped answering and was given up, and the server may
 * still run it) leaves the barrier at once (pin): a FLUSH need not wait for it, which could be
 * for ever, because a FLUSH vouches only for writes that completed, and this one's caller was
 * told it failed. What could overtake it, an overlapping write, the range lock refuses. A
 * FLUSH in doubt lets later writes go (a FLUSH changes no data, so nothing can overtake it).
 */
import { WaitQueue } from './wait-queue.ts'

export type OrderKind = 'write' | 'flush'

export class WriteOrder {
  #writes = 0
  #flushes = 0
  readonly #queue = new WaitQueue<OrderKind>({
    grantable: (kind, ahead) => ahead.length === 0 && this.#fits(kind),
    granted: (kind) => { this.#enter(kind) }
  })

  /** Admits at once (returns undefined), or returns the wait. Pair every admission with leave(). */
  enter (kind: OrderKind, signal?: AbortSignal): Promise<void> | undefined {
    if (this.#queue.length === 0 && this.#fits(kind)) {
      this.#enter(kind)
      return undefined
    }
    return this.#queue.wait(kind, signal)
  }

  leave (kind: OrderKind): void {
    if (kind === 'write') this.#writes--
    else this.#flushes--
    this.#queue.pump()
  }

  /**
   * An admitted write is in doubt: it leaves the barrier now, and its life's end needs no
   * leave() of its own.
   */
  pin (): void {
    this.leave('write')
  }

  #fits (kind: OrderKind): boolean {
    return kind === 'write' ? this.#flushes === 0 : this.#writes === 0
  }

  #enter (kind: OrderKind): void {
    if (kind === 'write') this.#writes++
    else this.#flushes++
  }
}
