/**
 * Slots and cookies (QEMU's free_sema, in_flight and requests[]).
 *
 *   Admission   per engine: at most maxInFlight requests hold a slot, from admission until
 *               their life on the wire ends (while they wait for a reconnect too). Who finds
 *               every slot taken waits in line, FIFO; the common case is a counter increment.
 *   CookieTable per connection: the requests on its wire, by cookie. A cookie is
 *               sequence · 2^16 + slot + 1: the slot finds the request, the sequence tells a
 *               late or forged reply from the request that now holds the slot. It also counts
 *               the large READs on the wire, and says when there come to be some and none
 *               (the link then has its reader read reply headers at their exact size).
 */
import { ProtocolError } from '../../errors.ts'
import { NBD_CMD, NBD_EXTENDED_REQUEST_HEADER, NBD_REQUEST_HEADER } from '../../protocol/constants.ts'
import { LEND_MIN } from '../../transport/socket-reader.ts'
import { WaitQueue } from '../wait-queue.ts'
import type { Reply } from './reply.ts'
import type { Request } from './request.ts'

/** The most slots the cookie encoding leaves room for. */
export const MAX_IN_FLIGHT = 4096
const SLOT_SPACE = 0x1_0000

export class Admission {
  #max: number
  #admitted = 0
  #drained: (() => void) | null = null
  readonly #queue = new WaitQueue<Request>({
    grantable: (_req, ahead) => ahead.length === 0 && this.#admitted < this.#max,
    granted: () => { this.#admitted++ }
  })

  constructor (max: number) {
    this.#max = max
  }

  get max (): number {
    return this.#max
  }

  set max (n: number) {
    this.#max = n
    this.#queue.pump()
  }

  get admitted (): number {
    return this.#admitted
  }

  get waiting (): number {
    return this.#queue.length
  }

  /** Admits at once (undefined) or returns the wait, which the caller's signal may cut short. */
  admit (req: Request, signal: AbortSignal | undefined): Promise<void> | undefined {
    if (this.#admitted < this.#max && this.#queue.length === 0) {
      this.#admitted++
      return undefined
    }
    return this.#queue.wait(req, signal)
  }

  release (): void {
    this.#admitted--
    this.#queue.pump()
    if (this.#admitted === 0 && this.#queue.length === 0) this.#drained?.()
  }

  /** Resolves once nothing holds a slot and nothing waits for one. */
  idle (): Promise<void> {
    if (this.#admitted === 0 && this.#queue.length === 0) return Promise.resolve()
    return new Promise((resolve) => {
      const previous = this.#drained
      this.#drained = () => { previous?.(); this.#drained = null; resolve() }
    })
  }

  rejectWaiting (err: Error): void {
    this.#queue.rejectAll(err)
  }
}

export class CookieTable {
  #slots: Array<Request | undefined> = []
  readonly #free: number[] = []
  /** Per slot: a 32-byte header buffer and its 28-byte compact view, made once. */
  readonly #headers: Buffer[] = []
  readonly #compact: Buffer[] = []
  /** Per slot: the Reply its requests read into, made on first use and reused after. */
  readonly #replies: Array<Reply | undefined> = []
  #sequence = 0
  #count = 0
  /** READs of LEND_MIN bytes or more on the wire (their payloads are read into place). */
  #largeReads = 0
  readonly #onLargeReads: ((inFlight: boolean) => void) | undefined

  constructor (onLargeReads?: (inFlight: boolean) => void) {
    this.#onLargeReads = onLargeReads
  }

  get count (): number {
    return this.#count
  }

  /** Gives `req` a slot and a fresh cookie. */
  register (req: Request): void {
    let slot = this.#free.pop()
    if (slot === undefined) {
      slot = this.#slots.length
      if (slot >= MAX_IN_FLIGHT) throw new Error('internal: cookie table overflow')
      this.#slots.push(undefined)
      const header = Buffer.alloc(NBD_EXTENDED_REQUEST_HEADER)
      this.#headers.push(header)
      this.#compact.push(header.subarray(0, NBD_REQUEST_HEADER))
    }
    this.#sequence++
    req.slot = slot
    req.cookie = this.#sequence * SLOT_SPACE + slot + 1
    this.#slots[slot] = req
    this.#count++
    if (req.type === NBD_CMD.READ && req.length >= LEND_MIN && this.#largeReads++ === 0) this.#onLargeReads?.(true)
  }

  /** The 32-byte header buffer of a registered request (encodeRequest writes into it). */
  headerOf (req: Request): Buffer {
    return this.#headers[req.slot]!
  }

  /**
   * The Reply a registered request reads into: its slot's, reused (a slot has one request at
   * a time, and a Reply is done with before its request leaves the slot); undefined the
   * first time (then keepReply).
   */
  replyFor (req: Request): Reply | undefined {
    return this.#replies[req.slot]?.reuse(req)
  }

  keepReply (req: Request, reply: Reply): Reply {
    this.#replies[req.slot] = reply
    return reply
  }

  /** Its first 28 bytes: what goes on the wire without extended headers. */
  compactOf (req: Request): Buffer {
    return this.#compact[req.slot]!
  }

  unregister (req: Request): void {
    if (req.slot < 0 || this.#slots[req.slot] !== req) return
    this.#slots[req.slot] = undefined
    this.#free.push(req.slot)
    req.slot = -1
    req.cookie = 0
    this.#count--
    if (req.type === NBD_CMD.READ && req.length >= LEND_MIN && --this.#largeReads === 0) this.#onLargeReads?.(false)
  }

  /** The request a reply's cookie names; a ProtocolError if it is not one in flight. */
  lookup (cookie: number): Request {
    const slot = (cookie % SLOT_SPACE) - 1
    const req = slot >= 0 ? this.#slots[slot] : undefined
    if (req === undefined || req.cookie !== cookie) {
      throw new ProtocolError(`reply for cookie ${cookie < 0 ? '(out of range)' : cookie}, which is not in flight`)
    }
    return req
  }

  * requests (): Generator<Request> {
    for (const req of this.#slots) if (req !== undefined) yield req
  }

  /** When the oldest request on the wire went out; Infinity when none is. */
  oldestSentAt (): number {
    let oldest = Infinity
    for (const req of this.#slots) if (req !== undefined && req.sentAt < oldest) oldest = req.sentAt
    return oldest
  }
}
