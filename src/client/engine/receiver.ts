/**
 * The read side of one connection (QEMU §3.2, nbd_receive_replies). A request that is sent
 * calls receive(); whoever finds receiveMutex free runs receiveReplies(), which reads reply
 * headers into `#current` (QEMU's s->reply) and wakes the request each one belongs to — here
 * waking is reading that request's chunk into its own buffer and, at its reply's end, telling
 * the request (req.replied), which settles its one promise. There is one thread, so the mutex
 * is a field: nobody ever waits on it, and receiveReplies() runs for as long as sent requests
 * wait for replies, synchronously while bytes are buffered and with one read pending when
 * they are not.
 *
 *     request A sent ──► receive(A): mutex free ──► receiveReplies() holds it
 *     request B sent ──► receive(B): mutex held ──► nothing more to do
 *     header for B ──► current = B ──► B's payload straight into B.dest ──► B.replied()
 *     header for A ──► current = A ──► …                                 ──► A.replied()
 *     nobody waits ──► mutex released
 *
 * The read side is given back after every chunk, so chunks of different replies may
 * interleave. A header for a request still waiting for the socket to take its bytes (its
 * receive() not called yet) stays current, and reading resumes at that request's receive().
 *
 * The first error on the connection wins (Link.fail): every request waiting for a reply is
 * told it (in a later turn, never from inside Link.fail), so nothing hangs and nothing retries
 * on a link in the middle of failing.
 */
import { ConnectionError } from '../../errors.ts'
import { parseReplyHeaderInto, replyHeaderSize, type ReplyHeader } from '../../protocol/reply.ts'
import type { Link } from './link.ts'
import { STEP } from './reply.ts'
import type { Request } from './request.ts'

/** Where receiveReplies() is in the current chunk. */
const AT = {
  /** The chunk's header is read; the owner's Reply has not seen it yet. */
  HEADER: 0,
  /** The chunk's payload bytes are wanted (Reply.payload). */
  PAYLOAD: 1,
  /** Data is wanted in the owner's destination (Reply.data). */
  DATA: 2,
  /** The payload bytes arrived (in #bytes). */
  PAYLOAD_READ: 3,
  /** The data is in the owner's destination. */
  DATA_READ: 4
} as const
type At = (typeof AT)[keyof typeof AT]

export class Receiver {
  readonly #link: Link
  /** QEMU's receive_mutex: held while receiveReplies() runs (a read may be pending). */
  #receiveMutex = false
  /** The chunk being read (QEMU's s->reply), whose request, and how far. */
  #current: ReplyHeader | null = null
  #owner: Request | null = null
  #at: At = AT.HEADER
  #bytes: Buffer | null = null
  /** Sent requests waiting for their replies. */
  #receiving = 0
  /** Every header is read into this one object, in place (Reply keeps it for its chunk only). */
  readonly #header: ReplyHeader = { simple: false, error: 0, flags: 0, type: 0, cookie: 0, offset: undefined, length: 0 }
  readonly #parseHeader = (buf: Buffer, at: number): ReplyHeader => parseReplyHeaderInto(this.#header, buf, at)
  /** A PAYLOAD step's bytes, in place: the current chunk's owner's Reply reads them. */
  readonly #parsePayload = (buf: Buffer, at: number): number => this.#owner!.reply!.payload(buf, at)
  readonly #resume = (): void => { this.#run() }
  readonly #payloadRead = (bytes: Buffer): void => {
    this.#bytes = bytes
    this.#at = AT.PAYLOAD_READ
    this.#run()
  }

  readonly #dataRead = (): void => {
    this.#at = AT.DATA_READ
    this.#run()
  }

  readonly #readFailed = (err: unknown): void => {
    this.#link.fail(err)
    this.#run()
  }

  constructor (link: Link) {
    this.#link = link
  }

  /** `req` is sent: its reply is read, and req.replied told, by receiveReplies(). */
  receive (req: Request): void {
    req.receiving = true
    this.#receiving++
    this.#receiveReplies()
  }

  /** The request lets go of the link without (the rest of) its reply. */
  leave (req: Request): void {
    if (req.receiving) {
      req.receiving = false
      this.#receiving--
    }
    // Its header was current while it still waited for the socket: the chunk's payload is
    // unread, so the stream is out of step from here (its send failed: the link is failing).
    if (this.#owner === req && !this.#receiveMutex) {
      this.#owner = null
      this.#current = null
      if (this.#link.error === null) this.#link.fail(new ConnectionError('a reply arrived for a request whose send failed, and its payload was left unread'))
      this.#receiveReplies()
    }
  }

  /** The link failed: whoever waits for a reply is told, in a later turn. */
  failed (): void {
    if (this.#receiving > 0 && !this.#receiveMutex) queueMicrotask(this.#resume)
  }

  /** QEMU's nbd_receive_replies, entered when the mutex is free. */
  #receiveReplies (): void {
    if (this.#receiveMutex) return
    this.#receiveMutex = true
    this.#run()
  }

  /**
   * Holding receiveMutex: reads chunks until a read must wait (it returns with the mutex held
   * and the read's callbacks coming back here) or nobody waits for a reply (released).
   */
  #run (): void {
    if (!this.#receiveMutex) {
      // A failed link's wake-up (failed()) that found nobody reading.
      this.#receiveReplies()
      return
    }
    const link = this.#link
    const reader = link.conn.reader
    for (;;) {
      if (link.error !== null) {
        this.#receiveMutex = false
        this.#owner = null
        this.#current = null
        this.#bytes = null
        this.#failAll(link.error)
        return
      }
      try {
        let owner = this.#owner
        if (owner === null) {
          if (this.#receiving === 0) {
            this.#receiveMutex = false
            return
          }
          const header = this.#tryReadHeader()
          if (header === undefined) {
            reader.fill(this.#headerBytesWanted(), 'reply header').then(this.#resume, this.#readFailed)
            return
          }
          owner = link.table.lookup(header.cookie)
          this.#owner = owner
          this.#current = header
          this.#at = AT.HEADER
        }
        if (!owner.receiving) {
          // Still waiting for the socket to take its bytes: go on at its receive().
          this.#receiveMutex = false
          return
        }
        const reply = owner.reply!
        let step: number
        switch (this.#at) {
          case AT.HEADER: step = reply.header(this.#current!); break
          case AT.PAYLOAD_READ: {
            const bytes = this.#bytes!
            this.#bytes = null
            step = reply.payload(bytes)
            break
          }
          case AT.DATA_READ: step = reply.data(); break
          default: throw new Error('internal: receiveReplies resumed without its read')
        }
        for (;;) {
          if (step === STEP.PAYLOAD) {
            const next = reader.tryParse(reply.length, this.#parsePayload)
            if (next === undefined) {
              this.#at = AT.PAYLOAD
              reader.take(reply.length, reply.what).then(this.#payloadRead, this.#readFailed)
              return
            }
            step = next
          } else if (step === STEP.DATA) {
            const pending = reader.readInto(owner, reply.at, reply.length, reply.what)
            if (pending !== undefined) {
              this.#at = AT.DATA
              pending.then(this.#dataRead, this.#readFailed)
              return
            }
            step = reply.data()
          } else {
            break
          }
        }
        // The chunk is read: the read side is free for the next header, whoever's it is.
        this.#owner = null
        this.#current = null
        if (step === STEP.DONE) {
          owner.receiving = false
          this.#receiving--
          owner.replied!(owner, link, null)
        }
      } catch (err) {
        // The server broke the protocol (or the stream ended): the link dies, and on the
        // next turn of the loop everyone waiting hears of it.
        link.fail(err)
      }
    }
  }

  /** Every request waiting for a reply on this (failed) link is told `error`. */
  #failAll (error: Error): void {
    if (this.#receiving === 0) return
    const waiting: Request[] = []
    for (const req of this.#link.table.requests()) if (req.receiving) waiting.push(req)
    for (const req of waiting) {
      if (!req.receiving) continue
      req.receiving = false
      this.#receiving--
      req.replied!(req, this.#link, error)
    }
  }

  /** The next reply header if all of it is buffered; undefined when bytes must be awaited. */
  #tryReadHeader (): ReplyHeader | undefined {
    const reader = this.#link.conn.reader
    if (reader.buffered < 4) return undefined
    const size = replyHeaderSize(reader.peekUInt32BE(), this.#link.conn.info.mode)
    return reader.tryParse(size, this.#parseHeader)
  }

  /** How many bytes the next reply header needs: its magic first, then the size it names. */
  #headerBytesWanted (): number {
    const reader = this.#link.conn.reader
    return reader.buffered < 4 ? 4 : replyHeaderSize(reader.peekUInt32BE(), this.#link.conn.info.mode)
  }
}
