/**
 * The read side of one connection (QEMU §3.2, nbd_receive_replies). Each request reads its
 * own reply; whoever holds receiveMutex reads reply headers into `#current` (QEMU's s->reply).
 * A header that is someone else's wakes its owner, and the reader parks; the owner reads its
 * chunk's payload straight into its own buffer, then clears `#current` and wakes one parked
 * request to read the next header. `#current !== null` is the token for "the read side
 * belongs to that cookie".
 *
 *     request A (holds receiveMutex)          request B (parked)
 *     header for B ──► current = B, wake B ──► B: current is mine, read payload into B.dest
 *     A parks (receiving = true)              B: current = null, wake A ──► A reads next header
 *
 * A request that finds the mutex held parks at once instead of queueing on it (QEMU queues on
 * its CoMutex, and each queued coroutine then takes the mutex only to find another's header):
 * every parked request is woken either by its own header or when the read side is free again,
 * so a reply costs one wake-up however many requests wait. The read side is given back after
 * every chunk, so chunks of different replies may interleave.
 *
 * The first error on the connection wins (Link.fail): the reader fails every read, whoever is
 * reading fails and wakes the next parked request, which fails in turn, so every pending
 * request is rejected with the same typed error and nothing hangs.
 */
import { Semaphore } from 'async-mutex'
import { parseReplyHeader, replyHeaderSize, type ReplyHeader } from '../../protocol/reply.ts'
import type { Link } from './link.ts'
import { STEP, type Step } from './reply.ts'
import type { Request } from './request.ts'

export class Receiver {
  readonly #link: Link
  /**
   * Held by the request reading reply headers. Nobody ever waits on it (a request that finds
   * it held parks), so it is taken only when free, synchronously: a binary semaphore set to 0,
   * without acquire()'s promises.
   */
  readonly #receiveMutex = new Semaphore(1)
  #current: ReplyHeader | null = null
  readonly #parked = new Set<Request>()

  constructor (link: Link) {
    this.#link = link
  }

  /** Reads `req`'s whole reply (every chunk, up to DONE). The outcome is in req.reply. */
  async receive (req: Request): Promise<void> {
    const reply = req.reply!
    for (;;) {
      // Until #current holds our header: each promise means "look again" (we parked, or read
      // headers for others), so no async frame is kept per wait.
      let receiving = this.#receiveReplies(req)
      while (receiving !== undefined) {
        await receiving
        receiving = this.#receiveReplies(req)
      }
      let step: Step
      try {
        const next = this.#drive(req, reply.header(this.#current!))
        step = typeof next === 'number' ? next : await next
      } catch (err) {
        throw this.#link.fail(err)
      } finally {
        this.#current = null
        this.#wakeNext()
      }
      if (step === STEP.DONE) return
    }
  }

  /** The request leaves without reading (on) its reply: hand the read side on if it held it. */
  leave (req: Request): void {
    if (this.#current !== null && this.#current.cookie === req.cookie) {
      this.#current = null
      this.#wakeNext()
    }
  }

  /** Runs the chunk's PAYLOAD and DATA steps; synchronous while the bytes are buffered. */
  #drive (req: Request, first: Step): Step | Promise<Step> {
    const reader = this.#link.conn.reader
    const reply = req.reply!
    let step = first
    for (;;) {
      if (step === STEP.PAYLOAD) {
        const bytes = reader.tryTake(reply.length)
        if (bytes === undefined) return reader.take(reply.length, reply.what).then((b) => this.#drive(req, reply.payload(b)))
        step = reply.payload(bytes)
      } else if (step === STEP.DATA) {
        const pending = reader.readInto(req, reply.at, reply.length, reply.what)
        if (pending !== undefined) return pending.then(() => this.#drive(req, reply.data()))
        step = reply.data()
      } else {
        return step
      }
    }
  }

  /**
   * QEMU's nbd_receive_replies: undefined once #current holds this request's header;
   * otherwise a promise after which the caller asks again. A header that is already buffered
   * is read synchronously, so the mutex is only taken when a reader has to wait for bytes,
   * and only when it is free: whoever finds it held parks.
   */
  #receiveReplies (req: Request): Promise<void> | undefined {
    try {
      for (;;) {
        const current = this.#current
        if (current !== null) {
          if (current.cookie === req.cookie) return undefined
          return this.#park(req)
        }
        const poison = this.#link.error
        if (poison !== null) throw poison
        const header = this.#tryReadHeader()
        if (header === undefined) {
          if (this.#receiveMutex.isLocked()) return this.#park(req)
          return this.#receiveRepliesLocked(req)
        }
        this.#dispatch(req, header)
      }
    } catch (err) {
      throw this.#readFailed(err)
    }
  }

  /**
   * The same loop, holding receiveMutex across every wait for bytes; resolves once #current is
   * set (for us, or for someone we woke), with the mutex released.
   */
  async #receiveRepliesLocked (req: Request): Promise<void> {
    this.#receiveMutex.setValue(0)
    const reader = this.#link.conn.reader
    try {
      while (this.#current === null) {
        const poison = this.#link.error
        if (poison !== null) throw poison
        const header = this.#tryReadHeader()
        if (header !== undefined) this.#dispatch(req, header)
        else await reader.fill(this.#headerBytesWanted(), 'reply header')
      }
    } catch (err) {
      throw this.#readFailed(err)
    } finally {
      this.#receiveMutex.release()
    }
  }

  /**
   * Another request owns the read side: wait until it hands it over. We are woken because our
   * header arrived (holding it grants the read side), or because the read side is free again.
   */
  #park (req: Request): Promise<void> {
    req.receiving = true
    this.#parked.add(req)
    return new Promise<void>((resolve) => { req.wake = resolve })
  }

  /** A header arrived: make it the current reply and wake its owner (QEMU: wake_one). */
  #dispatch (req: Request, header: ReplyHeader): void {
    const owner = this.#link.table.lookup(header.cookie)
    this.#current = header
    if (owner !== req) this.#wake(owner)
  }

  /** We were reading headers and failed: record it, and let the next parked request find out. */
  #readFailed (err: unknown): Error {
    const error = this.#link.fail(err)
    this.#wakeNext()
    return error
  }

  /** The next reply header if all of it is buffered; undefined when bytes must be awaited. */
  #tryReadHeader (): ReplyHeader | undefined {
    const reader = this.#link.conn.reader
    if (reader.buffered < 4) return undefined
    const size = replyHeaderSize(reader.peekUInt32BE(), this.#link.conn.info.mode)
    const buf = reader.tryTake(size)
    return buf === undefined ? undefined : parseReplyHeader(buf)
  }

  /** How many bytes the next reply header needs: its magic first, then the size it names. */
  #headerBytesWanted (): number {
    const reader = this.#link.conn.reader
    return reader.buffered < 4 ? 4 : replyHeaderSize(reader.peekUInt32BE(), this.#link.conn.info.mode)
  }

  #wake (req: Request): void {
    if (!req.receiving) return
    // Clear the flag before waking so the request is never woken twice (QEMU bbfb7c2f35).
    req.receiving = false
    this.#parked.delete(req)
    const wake = req.wake!
    req.wake = null
    wake()
  }

  #wakeNext (): void {
    for (const req of this.#parked) {
      this.#wake(req)
      return
    }
  }
}
