/**
 * The request engine of one NBD connection, after QEMU's block/nbd.c once it dropped its
 * always-running connection coroutine (4ddb5d2fde). Each request is its own async function:
 *
 *   submit ─► slot ─► waitConnected ─► send under sendMutex
 *          ─► receiveReplies under receiveMutex ─► read own payload ─► release slot
 *
 * Slots (QEMU's in_flight and free_sema). `#admitted` counts requests holding a slot, from
 * admission until their reply is done (including while they wait for a reconnect). A request
 * that finds all slots taken waits in `#slotQueue`, a p-queue of concurrency 1: FIFO, and
 * only its head waits for the next free slot. The fast path (a free slot, nobody waiting) is a
 * counter increment.
 *
 * Receiving (QEMU §3.2). Whoever holds receiveMutex reads the next reply header into the
 * shared `#reply` (QEMU's s->reply). If it is someone else's, the reader wakes the owner and
 * parks itself; the owner reads its payload straight into its own buffer without the mutex,
 * then clears `#reply` and wakes one parked request to read the next header. `#reply !== null`
 * is the token for "the read side belongs to that cookie". A request that finds the mutex
 * held parks at once instead of queueing on it (QEMU queues on its CoMutex, and each queued
 * coroutine then takes the mutex only to find another's header and yield): every parked
 * request is woken either by its own header or when the read side is free again, so a reply
 * costs one wake-up however many requests wait.
 *
 *     request A (holds receiveMutex)          request B (parked)
 *     header for B ──► #reply = B, wake B ──► B: #reply is mine, read payload into B.dest
 *     A parks (receiving = true)              B: #reply = null, wake A ──► A reads next header
 *
 * Failure (QEMU §3.4). The first error on a connection wins (`#poison`): the socket is
 * destroyed and the reader fails every read. Whoever is reading fails, clears `#reply` and
 * wakes the next parked request, which fails in turn: every pending request is rejected at
 * once with the same typed error and nothing hangs.
 *
 * States (QEMU §2), changed only in #setState:
 *
 *                    transport error, delay > 0                 delay timer fires,
 *      CONNECTED ────────────────────────────────► CONNECTING_WAIT ─── cancelInFlight() ──┐
 *        ▲   │       transport error, delay = 0                                          ▼
 *        │   └────────────────────────────────────────────────────────────► CONNECTING_NOWAIT
 *        │ connector delivers a compatible connection (from either CONNECTING state) │
 *        └────────────────────────────────────────────────────────────────────────────┘
 *      any ──► QUIT  on a protocol violation, a changed server, close() or destroy()
 *
 * While CONNECTING_WAIT, requests that failed on the old connection and new ones wait, and
 * are sent again from scratch once the background connector is back. Server error replies are
 * never retried. Nothing in here opens a socket: the connector does.
 */
import { EventEmitter } from 'node:events'
import diagnostics from 'node:diagnostics_channel'
import { performance } from 'node:perf_hooks'
import { Mutex, Semaphore } from 'async-mutex'
import PQueue from 'p-queue'
import {
  AbortedError, ClosedError, ConnectionError, NbdError, ProtocolError, ReconnectDelayError, ServerChangedError,
  ServerError, TimeoutError, isTransportError
} from '../errors.ts'
import { NBD_CMD, NBD_CMD_FLAG, NBD_EXTENDED_REQUEST_HEADER, NBD_REPLY_FLAG_DONE, NBD_REQUEST_HEADER } from '../protocol/constants.ts'
import { classifyChunk, parseErrorChunk, parseOffsetHole } from '../protocol/chunks.ts'
import { parseBlockStatus } from '../protocol/block-status.ts'
import { errnoFromNbd, NBD_ESHUTDOWN } from '../protocol/errno.ts'
import { commandName } from '../protocol/names.ts'
import { ReadAssembly } from '../protocol/read-assembly.ts'
import { parseReplyHeader, replyHeaderSize, type ReplyHeader } from '../protocol/reply.ts'
import { encodeRequest } from '../protocol/request.ts'
import type { Connection, Establish } from '../connector/connection.ts'
import { Connector } from '../connector/connector.ts'
import type { BackoffOptions } from '../connector/backoff.ts'
import type { ExportInfo } from '../connector/export-info.ts'
import { ClientStats } from '../stats/client-stats.ts'
import { deferred, type Deferred } from '../util/deferred.ts'
import { Request, type Command } from './request.ts'
import { checkReconnectedExport } from './reconnect-check.ts'

export const NBD_CLIENT_STATE = {
  CONNECTED: 'CONNECTED',
  CONNECTING_WAIT: 'CONNECTING_WAIT',
  CONNECTING_NOWAIT: 'CONNECTING_NOWAIT',
  QUIT: 'QUIT'
} as const
export type NbdClientState = (typeof NBD_CLIENT_STATE)[keyof typeof NBD_CLIENT_STATE]

export interface StateChange {
  readonly from: NbdClientState
  readonly to: NbdClientState
  readonly reason: string
}

/** Published on every state change, for tracing without holding a reference to the client. */
export const stateChannel = diagnostics.channel('nbdts:client:state')

export interface EngineOptions {
  readonly establish: Establish
  /** Requests in flight on this connection at most. */
  readonly maxInFlight: number
  /** A request without a reply for this long declares the connection dead (ms, 0 = never). */
  readonly requestTimeout: number
  /** How long requests wait for a lost server to come back (ms, 0 = fail at once). */
  readonly reconnectDelay: number
  /** How long the first connect keeps retrying (ms, 0 = one attempt). */
  readonly openTimeout: number
  readonly backoff?: BackoffOptions
  /** A label for messages and events ("connection 2 of 4"). */
  readonly label?: string
}

/** The most slots the cookie encoding leaves room for (cookie = sequence·2^16 + slot + 1). */
export const MAX_IN_FLIGHT = 4096
const SLOT_SPACE = 0x1_0000

export class Engine extends EventEmitter<{ state: [StateChange] }> {
  readonly stats = new ClientStats()
  readonly #options: EngineOptions
  /** How long requests wait for a lost server (ms); changeable at run time. */
  reconnectDelay: number
  /** Disconnected on purpose (disconnect()): the connector waits for reconnect(). */
  #held = false
  readonly #connector: Connector

  #state: NbdClientState = 'CONNECTING_WAIT'
  /** The live connection, or the one still unwinding after an error. */
  #conn: Connection | null = null
  /** The first error on #conn; everything that touches #conn afterwards gets it. */
  #poison: NbdError | null = null
  /** Why we quit, once in QUIT. */
  #quitError: NbdError | null = null
  /** What the first connection negotiated: later ones must match it. */
  #info: ExportInfo | null = null
  /** Requests waiting for CONNECTED; rejected when the delay expires or on QUIT. */
  #outage: Deferred<void> | null = null
  /** NOWAIT was reached because the delay expired (the errors then say so). */
  #delayExpired = false
  #delayTimer: NodeJS.Timeout | null = null
  #stallTimer: NodeJS.Timeout | null = null
  /** A connection that arrived while requests of the previous one were still unwinding. */
  #pendingConn: Connection | null = null
  /** The server answered ESHUTDOWN: finish what is in flight, then DISC and reconnect. */
  #retiring: Connection | null = null
  #closing = false

  // QEMU's send_mutex, receive_mutex, free_sema and requests[].
  readonly #sendMutex = new Mutex()
  /**
   * Held by the request reading reply headers. Nobody ever waits on it (a request that finds
   * it held parks), so it is taken only when free, synchronously: a binary semaphore set to 0,
   * without acquire()'s promises.
   */
  readonly #receiveMutex = new Semaphore(1)
  /** free_sema: requests waiting for a slot, in order. */
  readonly #slotQueue = new PQueue({ concurrency: 1 })
  /** The head of #slotQueue, waiting for a slot to free up. */
  #slotWaiter: (() => void) | null = null
  #maxInFlight: number
  /** Requests holding a slot: admitted and not finished. */
  #admitted = 0
  /** Resolves close() once nothing holds a slot and nothing waits for one. */
  #drainWaiter: (() => void) | null = null
  #slots: Array<Request | undefined> = []
  readonly #freeSlots: number[] = []
  /** Per slot: a 32-byte header buffer and its 28-byte compact view, made once. */
  readonly #headers: Buffer[] = []
  readonly #compactHeaders: Buffer[] = []
  #sequence = 0
  #inFlight = 0
  #reply: ReplyHeader | null = null
  readonly #parked = new Set<Request>()

  private constructor (options: EngineOptions) {
    super()
    this.#options = options
    this.reconnectDelay = options.reconnectDelay
    this.#maxInFlight = options.maxInFlight
    this.#connector = new Connector({
      establish: options.establish,
      ...(options.backoff !== undefined && { backoff: options.backoff }),
      onConnected: (conn) => { this.#onConnected(conn) },
      onAttemptFailed: (err, _attempt, retrying) => {
        this.stats.connectFailures++
        // Only a first connect without an open timeout stops retrying: it failed for good.
        if (!retrying) this.#quit(toNbdError(err))
      }
    })
    if (options.requestTimeout > 0) {
      const tick = Math.max(50, Math.min(1000, options.requestTimeout / 4))
      this.#stallTimer = setInterval(() => { this.#checkStall() }, tick).unref()
    }
  }

  /**
   * Connects for the first time. With openTimeout > 0 the connector retries with back-off
   * until then; otherwise one attempt decides.
   */
  static async open (options: EngineOptions, signal?: AbortSignal): Promise<Engine> {
    const engine = new Engine(options)
    engine.#outage = engine.#newOutage()
    engine.#connector.retry = options.openTimeout > 0
    const opened = engine.#outage.promise
    let timer: NodeJS.Timeout | undefined
    const onAbort = (): void => { engine.destroy(new AbortedError(signal?.reason)) }
    signal?.addEventListener('abort', onAbort, { once: true })
    try {
      if (signal?.aborted === true) throw new AbortedError(signal.reason)
      const attemptDone = new Promise<never>((_resolve, reject) => {
        if (options.openTimeout > 0) {
          timer = setTimeout(() => {
            const last = engine.#connector.lastError
            reject(new TimeoutError(`could not connect within ${options.openTimeout} ms${last === null ? '' : `: ${last.message}`}`, { cause: last ?? undefined }))
          }, options.openTimeout)
        }
        engine.once('state', (change) => {
          // A one-shot first attempt that failed leaves the engine connecting and idle.
          if (change.to === 'QUIT') reject(engine.#quitError)
        })
      })
      engine.#connector.kick()
      await Promise.race([opened, attemptDone])
      engine.#connector.retry = true
      return engine
    } catch (err) {
      engine.destroy(err instanceof NbdError ? err : new ConnectionError(String(err)))
      throw err
    } finally {
      clearTimeout(timer)
      signal?.removeEventListener('abort', onAbort)
    }
  }

  get state (): NbdClientState {
    return this.#state
  }

  /** What the first connection negotiated (later connections must match it). */
  get info (): ExportInfo {
    if (this.#info === null) throw new ClosedError('not connected')
    return this.#info
  }

  /** The live connection's meta contexts (ids differ between connections). */
  get contexts (): ReadonlyMap<number, string> {
    return this.#conn?.info.contexts ?? new Map()
  }

  get inFlight (): number {
    return this.#inFlight
  }

  get maxInFlight (): number {
    return this.#maxInFlight
  }

  set maxInFlight (n: number) {
    this.#maxInFlight = n
    this.#offerSlot()
  }

  /** Requests waiting for a slot. */
  get queued (): number {
    return this.#slotQueue.size + (this.#slotWaiter === null ? 0 : 1)
  }

  /** Admits a request to a slot: at once when one is free and nobody waits, else in turn. */
  #acquireSlot (): Promise<void> | undefined {
    if (this.#admitted < this.#maxInFlight && this.#slotQueue.size === 0 && this.#slotQueue.pending === 0) {
      this.#admitted++
      return undefined
    }
    return this.#slotQueue.add(() => new Promise<void>((resolve) => {
      this.#slotWaiter = () => {
        this.#admitted++
        resolve()
      }
      this.#offerSlot()
    }))
  }

  #releaseSlot (): void {
    this.#admitted--
    this.#offerSlot()
    if (this.#admitted === 0 && this.#slotQueue.size === 0 && this.#slotQueue.pending === 0) this.#drainWaiter?.()
  }

  #offerSlot (): void {
    const waiter = this.#slotWaiter
    if (waiter !== null && this.#admitted < this.#maxInFlight) {
      this.#slotWaiter = null
      waiter()
    }
  }

  get lastConnectError (): Error | null {
    return this.#connector.lastError
  }

  /**
   * Runs one command. The promise settles once the engine no longer touches the caller's
   * buffers: on abort, a WRITE whose payload is still queued in the socket rejects only when
   * the socket lets go of it.
   */
  submit (command: Command, signal?: AbortSignal): Promise<Request['statusChunks']> {
    if (signal?.aborted === true) return Promise.reject(new AbortedError(signal.reason))
    if (this.#closing) return Promise.reject(this.#quitError ?? new ClosedError('client is closed'))
    const req = new Request(command)
    const run = this.#run(req)
    if (signal === undefined) return run
    return new Promise((resolve, reject) => {
      const onAbort = (): void => {
        req.abandoned = true
        // The socket may be reading straight into dest: take it back before the caller reuses it.
        req.revoke?.()
        req.dest = null
        const fail = (): void => { reject(new AbortedError(signal.reason)) }
        if (req.payloadQueued) req.onPayloadReleased = fail
        else fail()
      }
      signal.addEventListener('abort', onAbort, { once: true })
      run.then(
        (value) => { signal.removeEventListener('abort', onAbort); resolve(value) },
        (err: unknown) => { signal.removeEventListener('abort', onAbort); reject(err) }
      )
    })
  }

  /**
   * QEMU's do/while retry loop, inside one slot: a transport failure while CONNECTING_WAIT
   * sends the request again.
   */
  async #run (req: Request): Promise<Request['statusChunks']> {
    const admission = this.#acquireSlot()
    if (admission !== undefined) await admission
    try {
      return await this.#execute(req)
    } finally {
      this.#releaseSlot()
    }
  }

  async #execute (req: Request): Promise<Request['statusChunks']> {
    for (;;) {
      if (req.abandoned) throw new AbortedError()
      const waiting = this.#waitConnected()
      if (waiting !== undefined) {
        try {
          await waiting
        } catch (err) {
          if (err instanceof ReconnectDelayError) this.stats.failedByDelay++
          throw err
        }
        continue
      }
      try {
        const sending = this.#send(req)
        if (sending !== undefined) await sending
        return await this.#receive(req)
      } catch (err) {
        if (!isTransportError(err) || req.abandoned || !this.#willReconnect(req)) throw err
        req.attempts++
        this.stats.retriedRequests++
      }
    }
  }

  /**
   * QEMU's nbd_client_will_reconnect: the request failed on a lost connection and the engine
   * is waiting for the server. Also true when the reconnect already happened while this
   * request was still unwinding from the old connection.
   */
  #willReconnect (req: Request): boolean {
    return this.#state === 'CONNECTING_WAIT' || (this.#state === 'CONNECTED' && req.conn !== this.#conn)
  }

  /** Undefined when requests may be sent now; a promise to wait on; or throws. */
  #waitConnected (): Promise<void> | undefined {
    switch (this.#state) {
      case 'CONNECTED':
        return undefined
      case 'CONNECTING_WAIT':
        return this.#outage!.promise
      case 'CONNECTING_NOWAIT': {
        const last = this.#connector.lastError ?? this.#poison
        if (this.#delayExpired) {
          throw new ReconnectDelayError(`the server has been unreachable for longer than the reconnect delay (${this.reconnectDelay} ms)`, { cause: last ?? undefined })
        }
        throw new ConnectionError('not connected to the server (reconnecting in the background)', { cause: last ?? undefined })
      }
      case 'QUIT':
        throw this.#quitError!
    }
  }

  // ── sending ──────────────────────────────────────────────────────────────────────────

  /**
   * Sends a request. The write itself is synchronous, so it cannot interleave with another;
   * sendMutex is held only while a sender waits for the socket to drain, and everyone behind
   * it queues on the mutex (QEMU holds send_mutex across its blocking write the same way).
   */
  #send (req: Request): Promise<void> | undefined {
    if (this.#sendMutex.isLocked()) return this.#sendLocked(req)
    const conn = this.#writeRequest(req)
    if (!mustDrain(conn)) return undefined
    return this.#sendMutex.runExclusive(() => this.#drainAfter(req, conn))
  }

  async #sendLocked (req: Request): Promise<void> {
    const release = await this.#sendMutex.acquire()
    try {
      const conn = this.#writeRequest(req)
      if (mustDrain(conn)) await this.#drainAfter(req, conn)
    } finally {
      release()
    }
  }

  async #drainAfter (req: Request, conn: Connection): Promise<void> {
    try {
      await waitDrain(conn)
    } catch (err) {
      if (req.slot >= 0) this.#unregister(req)
      throw this.#channelError(err, conn)
    }
  }

  /** Registers the request and queues its bytes; returns the connection it went to. */
  #writeRequest (req: Request): Connection {
    if (req.abandoned) throw new AbortedError()
    if (this.#state === 'QUIT') throw this.#quitError!
    const conn = this.#conn
    if (this.#state !== 'CONNECTED' || conn === null || this.#poison !== null) {
      throw new ConnectionError('the connection was lost before the request could be sent', { cause: this.#poison ?? undefined })
    }
    this.#register(req)
    req.resetReply()
    const extended = conn.info.mode === 'extended'
    const header = this.#headers[req.slot]!
    let flags = req.flags
    if (extended && req.payload !== undefined) flags |= NBD_CMD_FLAG.PAYLOAD_LEN
    encodeRequest(header, flags, req.type, req.cookie, req.offset, req.length, extended)
    const socket = conn.socket
    req.sentAt = performance.now()
    // Everything sent in one tick leaves in one writev: cork now, uncork once this tick's
    // requests are queued. Payloads are never copied.
    if (!this.#corked) {
      this.#corked = true
      socket.cork()
      process.nextTick(this.#uncork, this, socket)
    }
    socket.write(extended ? header : this.#compactHeaders[req.slot]!)
    if (req.payload !== undefined) {
      req.payloadQueued = true
      socket.write(req.payload, req.releasePayload)
    }
    return conn
  }

  #corked = false

  #uncork (this: void, engine: Engine, socket: Connection['socket']): void {
    engine.#corked = false
    socket.uncork()
  }

  #register (req: Request): void {
    let slot = this.#freeSlots.pop()
    if (slot === undefined) {
      slot = this.#slots.length
      if (slot >= MAX_IN_FLIGHT) throw new Error('internal: slot table overflow')
      this.#slots.push(undefined)
      const header = Buffer.alloc(NBD_EXTENDED_REQUEST_HEADER)
      this.#headers.push(header)
      this.#compactHeaders.push(header.subarray(0, NBD_REQUEST_HEADER))
    }
    this.#sequence++
    req.conn = this.#conn
    req.slot = slot
    req.cookie = this.#sequence * SLOT_SPACE + slot + 1
    this.#slots[slot] = req
    if (this.#inFlight++ === 0) this.#conn!.reader.expect(true)
    this.stats.inFlight = this.#inFlight
  }

  #unregister (req: Request): void {
    if (this.#reply !== null && this.#reply.cookie === req.cookie) {
      // The owner of the read side leaves without reading its reply (it failed while still
      // sending): hand the read side on, or the parked requests would wait forever.
      this.#reply = null
      this.#wakeNext()
    }
    this.#slots[req.slot] = undefined
    this.#freeSlots.push(req.slot)
    req.slot = -1
    req.cookie = 0
    this.stats.inFlight = --this.#inFlight
    if (this.#inFlight === 0) this.#idle()
  }

  /** The last request of a connection finished: act on what was waiting for that. */
  #idle (): void {
    this.#conn?.reader.expect(false)
    if (this.#retiring !== null) this.#retire(this.#retiring)
    if (this.#pendingConn !== null) {
      const conn = this.#pendingConn
      this.#pendingConn = null
      this.#install(conn)
    }
  }

  #lookup (cookie: number): Request {
    const slot = (cookie % SLOT_SPACE) - 1
    const req = slot >= 0 ? this.#slots[slot] : undefined
    if (req === undefined || req.cookie !== cookie) {
      throw new ProtocolError(`reply for cookie ${cookie < 0 ? '(out of range)' : cookie}, which is not in flight`)
    }
    return req
  }

  // ── receiving ────────────────────────────────────────────────────────────────────────

  async #receive (req: Request): Promise<Request['statusChunks']> {
    const conn = req.conn!
    try {
      for (;;) {
        // Until #reply holds our header: each promise means "look again" (we parked, or read
        // headers for others), so no async frame is kept per wait.
        let receiving = this.#receiveReplies(req, conn)
        while (receiving !== undefined) {
          await receiving
          receiving = this.#receiveReplies(req, conn)
        }
        let done: boolean
        try {
          const step = this.#handleChunk(req, this.#reply!, conn)
          done = typeof step === 'boolean' ? step : await step
        } catch (err) {
          throw this.#channelError(err, conn)
        } finally {
          // QEMU nbd_co_receive_one_chunk: give the read side back after every chunk, so chunks
          // of different replies may interleave.
          this.#reply = null
          this.#wakeNext()
        }
        if (done) break
      }
    } finally {
      this.#unregister(req)
    }
    return this.#finish(req, conn)
  }

  /**
   * QEMU's nbd_receive_replies: undefined once `#reply` holds this request's next header;
   * otherwise a promise after which the caller asks again. Reading headers is serialised by
   * receiveMutex; a header that is already buffered is read synchronously, so the mutex is
   * only taken when a reader has to wait for bytes, and only when it is free: whoever finds
   * it held parks.
   */
  #receiveReplies (req: Request, conn: Connection): Promise<void> | undefined {
    try {
      for (;;) {
        const reply = this.#reply
        if (reply !== null) {
          if (reply.cookie === req.cookie) return undefined
          return this.#park(req)
        }
        if (this.#poison !== null && this.#conn === conn) throw this.#poison
        const header = this.#tryReadHeader(conn)
        if (header === undefined) {
          // Bytes must be awaited. If someone already waits for them, wait to be woken (our
          // header, or the read side free again) rather than queue on the mutex: one wake per
          // reply instead of a hand-over to every queued request per header.
          if (this.#receiveMutex.isLocked()) return this.#park(req)
          return this.#receiveRepliesLocked(req, conn)
        }
        this.#dispatch(req, header)
      }
    } catch (err) {
      throw this.#readFailed(err, conn)
    }
  }

  /**
   * The same loop, holding receiveMutex across every wait for bytes; resolves once #reply is
   * set (for us, or for someone we woke), with the mutex released.
   */
  async #receiveRepliesLocked (req: Request, conn: Connection): Promise<void> {
    this.#receiveMutex.setValue(0)
    try {
      while (this.#reply === null) {
        if (this.#poison !== null && this.#conn === conn) throw this.#poison
        const header = this.#tryReadHeader(conn)
        if (header !== undefined) this.#dispatch(req, header)
        else await conn.reader.fill(headerBytesWanted(conn), 'reply header')
      }
    } catch (err) {
      throw this.#readFailed(err, conn)
    } finally {
      this.#receiveMutex.release()
    }
  }

  /**
   * Another request owns the read side: wait until it hands it over (receiving = true). We
   * are woken because our header arrived (it is in #reply, and holding it is what grants the
   * read side), or because the read side is free again; either way the caller looks again.
   */
  #park (req: Request): Promise<void> {
    req.receiving = true
    this.#parked.add(req)
    return new Promise<void>((resolve) => { req.wake = resolve })
  }

  /** A header arrived: make it the current reply and wake its owner (QEMU: wake_one). */
  #dispatch (req: Request, header: ReplyHeader): void {
    const owner = this.#lookup(header.cookie)
    this.#reply = header
    if (owner !== req) this.#wake(owner)
  }

  /** We were reading headers and failed: record it, and let the next parked request find out. */
  #readFailed (err: unknown, conn: Connection): NbdError {
    const error = this.#channelError(err, conn)
    this.#wakeNext()
    return error
  }

  /** The next reply header if all of it is buffered; undefined when bytes must be awaited. */
  #tryReadHeader (conn: Connection): ReplyHeader | undefined {
    const reader = conn.reader
    if (reader.buffered < 4) return undefined
    const size = replyHeaderSize(reader.peekUInt32BE(), conn.info.mode)
    const buf = reader.tryTake(size)
    return buf === undefined ? undefined : parseReplyHeader(buf)
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

  /**
   * Processes the chunk in #reply, which belongs to `req`. Returns whether the reply is
   * complete; a promise only when payload bytes are still on their way.
   */
  #handleChunk (req: Request, header: ReplyHeader, conn: Connection): boolean | Promise<boolean> {
    const reader = conn.reader
    const mode = conn.info.mode
    const chunks = this.stats.chunks
    if (header.simple) {
      chunks.simple++
      if (req.structured) throw new ProtocolError(`simple reply after structured chunks for ${commandName(req.type)}`)
      if (req.type === NBD_CMD.READ && mode !== 'simple') {
        throw new ProtocolError('simple reply to READ after structured replies were negotiated')
      }
      if (header.error !== 0) {
        req.serverError = serverError(header.error, '')
        return true
      }
      if (req.type !== NBD_CMD.READ) return true
      const pending = reader.readInto(req, 0, req.length, 'READ data')
      return pending === undefined ? true : pending.then(() => true)
    }

    req.structured = true
    if (header.offset !== undefined && header.offset !== req.offset) {
      throw new ProtocolError(`extended reply for offset ${header.offset} answers a request at ${req.offset}`)
    }
    const done = (header.flags & NBD_REPLY_FLAG_DONE) !== 0
    switch (classifyChunk(header, req.type, req.length, mode)) {
      case 'none':
        chunks.none++
        return true
      case 'offset-data': {
        chunks.data++
        const dataLength = header.length - 8
        const readData = (prefix: Buffer): boolean | Promise<boolean> => {
          const chunkOffset = prefix.readBigUInt64BE(0)
          let at = 0
          if (done && req.assembly === undefined && dataLength === req.length && chunkOffset === req.offset) {
            // The common reply: one chunk with all the data. Nothing to reassemble.
            req.wholeChunk = true
          } else {
            req.assembly ??= new ReadAssembly(req.offset, req.length, (req.flags & NBD_CMD_FLAG.DF) !== 0)
            at = req.assembly.addContent(chunkOffset, dataLength, 'OFFSET_DATA chunk')
          }
          const pending = reader.readInto(req, at, dataLength, 'OFFSET_DATA payload')
          return pending === undefined ? done : pending.then(() => done)
        }
        const prefix = reader.tryTake(8)
        return prefix !== undefined ? readData(prefix) : reader.take(8, 'OFFSET_DATA offset').then(readData)
      }
      case 'offset-hole':
        chunks.hole++
        return this.#withPayload(reader, header.length, 'OFFSET_HOLE chunk', (payload) => {
          const hole = parseOffsetHole(payload)
          req.assembly ??= new ReadAssembly(req.offset, req.length, (req.flags & NBD_CMD_FLAG.DF) !== 0)
          const at = req.assembly.addContent(hole.offset, hole.size, 'OFFSET_HOLE chunk')
          req.dest?.fill(0, at, at + hole.size)
          return done
        })
      case 'block-status':
        chunks.status++
        return this.#withPayload(reader, header.length, 'BLOCK_STATUS chunk', (payload) => {
          const chunk = parseBlockStatus(payload, mode === 'extended', req.length, (req.flags & NBD_CMD_FLAG.REQ_ONE) !== 0)
          if (!conn.info.contexts.has(chunk.contextId)) {
            throw new ProtocolError(`BLOCK_STATUS for meta context id ${chunk.contextId}, which was not selected`)
          }
          req.statusChunks ??= []
          if (req.statusChunks.some((c) => c.contextId === chunk.contextId)) {
            throw new ProtocolError(`two BLOCK_STATUS chunks for meta context id ${chunk.contextId} in one reply`)
          }
          req.statusChunks.push(chunk)
          return done
        })
      case 'error':
        chunks.error++
        return this.#withPayload(reader, header.length, 'error chunk', (payload) => {
          const chunk = parseErrorChunk(header.type, payload)
          if (chunk.offset !== undefined && req.type === NBD_CMD.READ) {
            req.assembly ??= new ReadAssembly(req.offset, req.length, (req.flags & NBD_CMD_FLAG.DF) !== 0)
            req.assembly.addErrorOffset(chunk.offset)
          } else if (chunk.offset !== undefined && (chunk.offset < req.offset || chunk.offset >= req.offset + BigInt(req.length))) {
            throw new ProtocolError(`ERROR_OFFSET at ${chunk.offset} lies outside the request ${req.offset}+${req.length}`)
          }
          // The first server error is the one reported (QEMU keeps request_ret the same way).
          req.serverError ??= serverError(chunk.error, chunk.message, chunk.offset)
          return done
        })
    }
  }

  #withPayload (reader: Connection['reader'], length: number, what: string, use: (payload: Buffer) => boolean): boolean | Promise<boolean> {
    const payload = reader.tryTake(length)
    return payload !== undefined ? use(payload) : reader.take(length, what).then(use)
  }

  /** The reply is complete: turn it into the request's result. */
  #finish (req: Request, conn: Connection): Request['statusChunks'] {
    const failure = req.serverError
    if (failure !== undefined) {
      if (failure.nbdError === NBD_ESHUTDOWN) {
        // The server is going away, not failing our data: finish what is in flight, then
        // disconnect and reconnect; this request is sent again (as a transport failure).
        this.#serverShuttingDown(conn)
        throw new ConnectionError('the server is shutting down (ESHUTDOWN)', { cause: failure })
      }
      this.stats.serverErrors++
      throw failure
    }
    if (req.type === NBD_CMD.READ && req.structured && !req.wholeChunk && req.assembly?.complete !== true) {
      throw this.#channelError(new ProtocolError(`READ reply ended with DONE but without data for every byte of ${req.offset}+${req.length}`), conn)
    }
    if (req.type === NBD_CMD.BLOCK_STATUS) {
      const got = req.statusChunks?.length ?? 0
      if (got !== conn.info.contexts.size) {
        // The connection is fine; this request did not get what success promises.
        throw new ProtocolError(`BLOCK_STATUS reply covers ${got} of the ${conn.info.contexts.size} selected meta contexts`)
      }
    }
    this.stats.completed(req.type, req.length)
    return req.statusChunks
  }

  // ── connection lifecycle ─────────────────────────────────────────────────────────────

  /**
   * Records the first error of a connection and kills it (QEMU nbd_channel_error): a
   * protocol violation ends the client (QUIT); anything else is a transport error and starts
   * a reconnect. Returns the error every request on that connection reports.
   */
  #channelError (err: unknown, conn: Connection): NbdError {
    const error = toNbdError(err)
    if (conn !== this.#conn) return error
    if (this.#poison !== null) return this.#poison
    this.#poison = error
    conn.reader.fail(error)
    conn.socket.destroy()
    if (error instanceof TimeoutError) this.stats.timeouts++
    if (error instanceof ProtocolError) this.#quit(error)
    else if (this.#state === 'CONNECTED') this.#lostConnection(describe(error), true)
    return error
  }

  #lostConnection (reason: string, kick: boolean, delay = this.reconnectDelay): void {
    if (this.#closing) {
      // Nobody is coming back for these requests: close() fails them rather than reconnect.
      this.#quit(new ClosedError(`client closed after the connection was lost: ${reason}`))
      return
    }
    this.#delayExpired = false
    if (delay > 0) {
      this.#outage = this.#newOutage()
      this.#setState('CONNECTING_WAIT', reason)
      this.#delayTimer = setTimeout(() => { this.#onDelayExpired() }, delay)
    } else {
      this.#setState('CONNECTING_NOWAIT', reason)
    }
    if (kick) this.#connector.kick()
  }

  #serverShuttingDown (conn: Connection): void {
    this.#beginRetire(conn, 'the server is shutting down (ESHUTDOWN)', this.reconnectDelay)
  }

  /**
   * A soft reconnect: send nothing new, let the requests in flight finish, then
   * NBD_CMD_DISC, close, and let the connector open a new connection. Used when the server
   * answers ESHUTDOWN and when asked to reconnect.
   */
  #beginRetire (conn: Connection, reason: string, delay: number): void {
    if (conn !== this.#conn || this.#state !== 'CONNECTED') return
    this.#retiring = conn
    this.#lostConnection(reason, false, delay)
    if (this.#inFlight === 0) this.#retire(conn)
  }

  /** Soft disconnect of a retiring connection, then reconnect. */
  #retire (conn: Connection): void {
    this.#retiring = null
    if (this.#poison === null && this.#conn === conn) {
      this.#poison = new ConnectionError('the connection was closed for a reconnect')
      sendDisconnect(conn)
      conn.reader.fail(this.#poison)
      void closedWithin(conn, 1000)
    }
    if (!this.#closing && !this.#held) this.#connector.kick()
  }

  #onDelayExpired (): void {
    this.#delayTimer = null
    if (this.#state !== 'CONNECTING_WAIT') return
    this.#giveUpWaiting(`the server did not come back within the reconnect delay (${this.reconnectDelay} ms)`)
  }

  #giveUpWaiting (reason: string): void {
    this.#delayExpired = true
    this.#setState('CONNECTING_NOWAIT', reason)
    const outage = this.#outage
    this.#outage = null
    const last = this.#connector.lastError ?? this.#poison
    outage?.reject(new ReconnectDelayError(reason, { cause: last ?? undefined }))
  }

  /**
   * QEMU's cancel_in_flight: requests waiting for the server fail now instead of at the end
   * of the reconnect delay; later requests fail at once until the connector is back.
   */
  cancelInFlight (): void {
    if (this.#delayTimer !== null) clearTimeout(this.#delayTimer)
    this.#delayTimer = null
    if (this.#state === 'CONNECTING_WAIT') this.#giveUpWaiting('requests waiting for the server were cancelled')
  }

  /**
   * Reconnects without failing anything: requests in flight finish on the old connection, new
   * ones wait (up to the reconnect delay, or the handshake timeout when that is 0) for the new
   * one. When not connected, the connector tries again at once instead of sleeping.
   */
  reconnect (): void {
    this.#held = false
    const conn = this.#conn
    if (conn !== null && this.#state === 'CONNECTED') {
      const delay = this.reconnectDelay > 0 ? this.reconnectDelay : Math.max(this.#options.openTimeout, 10_000)
      this.#beginRetire(conn, 'reconnect requested', delay)
    } else {
      this.#connector.kick(true)
    }
  }

  /**
   * Disconnects on purpose: in-flight requests finish, then NBD_CMD_DISC. The connector then
   * waits for reconnect(); requests meanwhile wait up to the reconnect delay, then fail.
   */
  disconnect (): void {
    this.#held = true
    const conn = this.#conn
    if (conn !== null && this.#state === 'CONNECTED') this.#beginRetire(conn, 'disconnect requested', this.reconnectDelay)
  }

  /** A snapshot of the requests on the wire (for `show requests`). */
  requests (): Array<{ cookie: number, type: string, offset: bigint, length: number, ageMs: number, attempts: number }> {
    const now = performance.now()
    const out = []
    for (const req of this.#slots) {
      if (req === undefined) continue
      out.push({ cookie: req.cookie, type: commandName(req.type).replace('NBD_CMD_', ''), offset: req.offset, length: req.length, ageMs: Math.round(now - req.sentAt), attempts: req.attempts })
    }
    return out
  }

  #onConnected (conn: Connection): void {
    if (this.#state === 'QUIT' || this.#closing) {
      conn.socket.destroy()
      return
    }
    if (this.#info === null) {
      this.#info = conn.info
    } else {
      const problem = checkReconnectedExport(this.#info, conn.info)
      if (problem !== undefined) {
        // Nothing is sent to a server that is not the one our data went to.
        conn.socket.destroy()
        this.#quit(new ServerChangedError(`the server came back with a different export: ${problem}`))
        return
      }
      this.stats.reconnects++
    }
    if (this.#inFlight > 0) {
      this.#pendingConn = conn
      return
    }
    this.#install(conn)
  }

  #install (conn: Connection): void {
    this.#conn = conn
    this.#poison = null
    this.#reply = null
    if (this.#delayTimer !== null) clearTimeout(this.#delayTimer)
    this.#delayTimer = null
    this.#delayExpired = false
    this.#setState('CONNECTED', 'connected')
    const outage = this.#outage
    this.#outage = null
    outage?.resolve()
  }

  #quit (error: NbdError): void {
    if (this.#state === 'QUIT') return
    this.#quitError = error
    this.#setState('QUIT', describe(error))
    if (this.#delayTimer !== null) clearTimeout(this.#delayTimer)
    this.#delayTimer = null
    this.#connector.stop()
    this.#pendingConn?.socket.destroy()
    this.#pendingConn = null
    const outage = this.#outage
    this.#outage = null
    outage?.reject(error)
    const conn = this.#conn
    if (conn !== null && this.#poison === null) {
      this.#poison = error
      conn.reader.fail(error)
      conn.socket.destroy()
    }
  }

  #newOutage (): Deferred<void> {
    const outage = deferred()
    // Rejected when nobody waits (no request during the outage): that is not an error.
    outage.promise.catch(() => {})
    return outage
  }

  /** The one place the state changes: event, diagnostics channel. */
  #setState (to: NbdClientState, reason: string): void {
    const from = this.#state
    if (from === to) return
    this.#state = to
    const change = { from, to, reason }
    if (stateChannel.hasSubscribers) stateChannel.publish({ label: this.#options.label, ...change })
    this.emit('state', change)
  }

  #checkStall (): void {
    const conn = this.#conn
    if (this.#inFlight === 0 || conn === null || this.#poison !== null) return
    const limit = performance.now() - this.#options.requestTimeout
    for (const req of this.#slots) {
      if (req !== undefined && req.sentAt < limit) {
        this.#channelError(new TimeoutError(`no reply to ${commandName(req.type)} within ${this.#options.requestTimeout} ms`), conn)
        return
      }
    }
  }

  // ── closing ──────────────────────────────────────────────────────────────────────────

  #closed: Promise<void> | null = null

  /**
   * Connected: waits for every submitted request to finish (each is bounded by the request
   * timeout), sends NBD_CMD_DISC and closes. Not connected: fails the waiting requests at once.
   * Either way the connector stops and nothing is left behind: no timer, no socket.
   */
  close (): Promise<void> {
    this.#closed ??= this.#close()
    return this.#closed
  }

  async #close (): Promise<void> {
    this.#closing = true
    if (this.#state !== 'CONNECTED' || this.#retiring !== null) {
      // The server is not there: requests waiting for it fail now, the connector stops.
      this.#quit(new ClosedError('client closed while the server was unreachable'))
    }
    if (this.#admitted > 0 || this.#slotQueue.size > 0 || this.#slotQueue.pending > 0) {
      await new Promise<void>((resolve) => { this.#drainWaiter = resolve })
    }
    const conn = this.#conn
    if (conn !== null && this.#state === 'CONNECTED' && this.#poison === null) {
      const release = await this.#sendMutex.acquire()
      try {
        sendDisconnect(conn)
      } finally {
        release()
      }
      await closedWithin(conn, 1000)
    }
    this.#shutdown(new ClosedError('client closed'))
  }

  /** Fails everything now: waiting and in-flight requests reject, nothing is left running. */
  destroy (error: NbdError = new ClosedError('client destroyed')): void {
    this.#closing = true
    this.#shutdown(error)
  }

  #shutdown (error: NbdError): void {
    this.#quit(error)
    this.#connector.stop()
    if (this.#stallTimer !== null) clearInterval(this.#stallTimer)
    this.#stallTimer = null
    this.#conn?.socket.destroy()
  }
}

/** NBD_CMD_DISC: no reply; the server finishes what it has and closes. Then we close too. */
function sendDisconnect (conn: Connection): void {
  const header = Buffer.alloc(NBD_EXTENDED_REQUEST_HEADER)
  const extended = conn.info.mode === 'extended'
  encodeRequest(header, 0, NBD_CMD.DISC, 0, 0n, 0, extended)
  conn.socket.end(extended ? header : header.subarray(0, NBD_REQUEST_HEADER))
}

function closedWithin (conn: Connection, ms: number): Promise<void> {
  return new Promise((resolve) => {
    if (conn.socket.destroyed) {
      resolve()
      return
    }
    const timer = setTimeout(() => { conn.socket.destroy() }, ms)
    conn.socket.once('close', () => { clearTimeout(timer); resolve() })
    // The server closes after DISC; reading on lets us see its FIN.
    conn.socket.resume()
  })
}

/**
 * Senders wait for the socket to drain only past this many queued bytes. Payloads are queued
 * by reference, never copied, and maxInFlight already bounds what can be queued; waiting at
 * the stream's own 16 KiB mark would put every request of a busy tick through the send mutex.
 */
const SEND_QUEUE_LIMIT = 8 * 1024 * 1024

function mustDrain (conn: Connection): boolean {
  return conn.socket.writableNeedDrain && conn.socket.writableLength > SEND_QUEUE_LIMIT
}

/** How many bytes the next reply header needs: its magic first, then the size it names. */
function headerBytesWanted (conn: Connection): number {
  const reader = conn.reader
  return reader.buffered < 4 ? 4 : replyHeaderSize(reader.peekUInt32BE(), conn.info.mode)
}

function waitDrain (conn: Connection): Promise<void> {
  const socket = conn.socket
  if (socket.destroyed) return Promise.reject(new ConnectionError('connection closed while sending'))
  // The write may have finished between our check and now (a fast reader lets a whole payload
  // go in one writev, and Node then emits 'drain' in a nextTick, before this listener exists):
  // waiting for an event that already happened would hang until the stall timer fires.
  if (!socket.writableNeedDrain) return Promise.resolve()
  return new Promise((resolve, reject) => {
    const done = (err?: Error): void => {
      socket.off('drain', onDrain)
      socket.off('close', onClose)
      if (err === undefined) resolve()
      else reject(err)
    }
    const onDrain = (): void => { done() }
    const onClose = (): void => { done(conn.reader.error ?? new ConnectionError('connection closed while sending')) }
    socket.once('drain', onDrain)
    socket.once('close', onClose)
  })
}

function serverError (value: number, message: string, offset?: bigint): ServerError {
  const errno = errnoFromNbd(value)
  const text = `server error ${errno}${message === '' ? '' : `: ${message}`}${offset === undefined ? '' : ` (at offset ${offset})`}`
  return new ServerError(errno, value, text, offset)
}

function toNbdError (err: unknown): NbdError {
  if (err instanceof NbdError) return err
  const code = (err as NodeJS.ErrnoException | undefined)?.code
  return new ConnectionError(`connection failed${code === undefined ? '' : ` (${code})`}`, { cause: err })
}

function describe (err: Error): string {
  return err.message
}
