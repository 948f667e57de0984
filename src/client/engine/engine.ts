/**
 * The request engine of one NBD connection, after QEMU's block/nbd.c once it dropped its
 * always-running connection coroutine (4ddb5d2fde). Each request is its own async function:
 *
 *   submit ─► slot (Admission) ─► a CONNECTED link (or wait in the Outage)
 *          ─► send under sendMutex (Sender) ─► receiveReplies under receiveMutex (Receiver)
 *          ─► its reply, step by step (Reply) ─► settle (its life on the wire is over) ─► answer
 *
 * Requests never open sockets: the background connector does, with back-off, and hands each
 * new connection over; it becomes the active Link once it passed the identity check and the
 * replay of acknowledged writes (the `recover` hook). While the server is away requests wait,
 * each until its own deadline (the reconnect delay from its first failure), and are sent
 * again from scratch on the next link. Server errors are never retried.
 *
 * Invariants:
 *   - A request lives on the wire from its first send until its reply or its link's close;
 *     `onSettled` reports that end, and only then may a later overlapping write or a FLUSH
 *     go. The caller may be answered earlier (abort, or its deadline while its link drains).
 *   - A request answered early is never sent again.
 *   - A link that stops answering (liveness, below) is not torn down with commands on it: it
 *     drains (NBD_CMD_DISC, read on until the server closes), so a write the server may still
 *     run is never re-sent where the original could land after the copy.
 *   - Liveness: a link with requests on it that moves no byte, either way, for requestTimeout
 *     is declared dead; after half of that a cheap probe asks whether the server still
 *     answers, so a slow command on a live server is waited for, not retried.
 */
import { EventEmitter } from 'node:events'
import { performance } from 'node:perf_hooks'
import {
  AbortedError, ClosedError, ConnectionError, NbdError, ProtocolError, ReconnectDelayError, ServerChangedError, ServerError,
  TimeoutError, isTransportError
} from '../../errors.ts'
import { NBD_CMD } from '../../protocol/constants.ts'
import { NBD_ESHUTDOWN } from '../../protocol/errno.ts'
import { commandName } from '../../protocol/names.ts'
import type { Connection, Establish } from '../../connector/connection.ts'
import { Connector } from '../../connector/connector.ts'
import type { BackoffOptions } from '../../connector/backoff.ts'
import type { ExportInfo } from '../../connector/export-info.ts'
import { ClientStats, type StatsSnapshot } from '../../stats/client-stats.ts'
import { deferred, type Deferred } from '../../util/deferred.ts'
import { checkReconnectedExport } from '../reconnect-check.ts'
import { Lifecycle, Outage, type NbdClientState, type StateChange } from './lifecycle.ts'
import { Link, toNbdError } from './link.ts'
import type { CommandResult } from './reply.ts'
import { Request, type Command, type SubmitHooks } from './request.ts'
import { Admission } from './slots.ts'

/** A new connection, before it takes requests: send what must come first (see ReplayLog). */
export interface RecoveryChannel {
  /** When the connection this one replaces was lost (performance.now()). */
  readonly lostAt: number
  /** Sends on this connection only; a failure there fails the recovery (and the connection). */
  submit: (command: Command) => Promise<CommandResult>
}

export type Recover = (channel: RecoveryChannel) => Promise<void>

export interface EngineOptions {
  readonly establish: Establish
  /** Requests in flight at most (slots). */
  readonly maxInFlight: number
  /** Liveness: a link that moves no byte for this long while requests wait is dead (ms, 0 = never). */
  readonly requestTimeout: number
  /** How long requests wait for a lost server, from their first failure (ms, 0 = fail at once). */
  readonly reconnectDelay: number
  /** How long the first connect keeps retrying (ms, 0 = one attempt). */
  readonly openTimeout: number
  readonly backoff?: BackoffOptions
  /** A label for messages and events ("connection 2 of 4"). */
  readonly label?: string
  /** A Unix socket path: a reappearing socket file is tried at once. */
  readonly watchPath?: string
  /** Runs on every connection after the first, before it takes requests. */
  readonly recover?: Recover
}

/** How long a link that is closing may take to finish what is on its wire, at least. */
const MIN_DRAIN_MS = 1000

export class Engine extends EventEmitter<{ state: [StateChange] }> {
  readonly stats = new ClientStats()
  /** How long requests wait for a lost server (ms); changeable at run time. */
  reconnectDelay: number
  readonly #options: EngineOptions
  readonly #lifecycle: Lifecycle
  readonly #outage = new Outage()
  readonly #admission: Admission
  readonly #connector: Connector
  readonly #links = new Set<Link>()
  #active: Link | null = null
  /** What the first connection negotiated: later ones must match it. */
  #info: ExportInfo | null = null
  #quitError: NbdError | null = null
  /** NOWAIT because the outage deadline passed (the errors then say so). */
  #delayExpired = false
  /** Disconnected on purpose (disconnect()): the connector waits for reconnect(). */
  #held = false
  #closing = false
  #tick: NodeJS.Timeout | null = null
  #opened: Deferred<void> | null = deferred()
  /** When the link that the next one replaces was lost. */
  #lostAt = -1

  private constructor (options: EngineOptions) {
    super()
    this.#options = options
    this.reconnectDelay = options.reconnectDelay
    this.#admission = new Admission(options.maxInFlight)
    this.#lifecycle = new Lifecycle(options.label, (change) => { this.emit('state', change) })
    this.#opened!.promise.catch(() => {})
    this.#connector = new Connector({
      establish: options.establish,
      ...(options.backoff !== undefined && { backoff: options.backoff }),
      ...(options.watchPath !== undefined && { watchPath: options.watchPath }),
      waiting: () => this.#outage.waiting > 0 || this.#admission.admitted > 0,
      onConnected: (conn) => { this.#onConnected(conn) },
      onAttemptFailed: (err, _attempt, retrying) => {
        this.stats.connectFailures++
        // Only a first connect without an open timeout stops retrying: it failed for good.
        if (!retrying) this.#quit(toNbdError(err))
      }
    })
    if (options.requestTimeout > 0) {
      const tick = Math.max(25, Math.min(1000, options.requestTimeout / 4))
      this.#tick = setInterval(() => { this.#checkLiveness() }, tick)
      this.#tick.unref()
    }
  }

  /**
   * Connects for the first time. With openTimeout > 0 the connector retries with back-off
   * until then; otherwise one attempt decides.
   */
  static async open (options: EngineOptions, signal?: AbortSignal): Promise<Engine> {
    const engine = new Engine(options)
    engine.#connector.retry = options.openTimeout > 0
    let timer: NodeJS.Timeout | undefined
    const onAbort = (): void => { engine.destroy(new AbortedError(signal?.reason)) }
    signal?.addEventListener('abort', onAbort, { once: true })
    try {
      if (signal?.aborted === true) throw new AbortedError(signal.reason)
      const opened = engine.#opened!.promise
      const timeout = new Promise<never>((_resolve, reject) => {
        if (options.openTimeout <= 0) return
        timer = setTimeout(() => {
          const last = engine.#connector.lastError
          reject(new TimeoutError(`could not connect within ${options.openTimeout} ms${last === null ? '' : `: ${last.message}`}`, { cause: last ?? undefined }))
        }, options.openTimeout)
      })
      engine.#connector.kick()
      await Promise.race([opened, timeout])
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
    return this.#lifecycle.state
  }

  /** What the first connection negotiated (later connections must match it). */
  get info (): ExportInfo {
    if (this.#info === null) throw new ClosedError('not connected')
    return this.#info
  }

  /** The active connection's meta contexts (ids differ between connections). */
  get contexts (): ReadonlyMap<number, string> {
    return this.#active?.conn.info.contexts ?? new Map()
  }

  /** The active connection runs over TLS (undefined while there is none). */
  get tls (): boolean | undefined {
    return this.#active?.tls
  }

  /** Requests on the wire, over every link still open. */
  get inFlight (): number {
    let n = 0
    for (const link of this.#links) n += link.inFlight
    return n
  }

  get maxInFlight (): number {
    return this.#admission.max
  }

  set maxInFlight (n: number) {
    this.#admission.max = n
  }

  /** Requests waiting for a slot. */
  get queued (): number {
    return this.#admission.waiting
  }

  /** Requests holding a slot (on the wire, or waiting for a connection). */
  get admitted (): number {
    return this.#admission.admitted
  }

  get lastConnectError (): Error | null {
    return this.#connector.lastError
  }

  snapshot (): StatsSnapshot {
    this.stats.inFlight = this.inFlight
    return this.stats.snapshot()
  }

  /**
   * Runs one command. The promise settles once the engine no longer touches the caller's
   * buffers; `hooks` see each send and the end of its life on the wire (see SubmitHooks).
   */
  submit (command: Command, signal?: AbortSignal, hooks?: SubmitHooks): Promise<CommandResult> {
    if (signal?.aborted === true || this.#closing) {
      void hooks?.settled?.(false)
      return Promise.reject(signal?.aborted === true ? new AbortedError(signal.reason) : this.#quitError ?? new ClosedError('client is closed'))
    }
    const req = new Request(command, hooks)
    const result = new Promise<CommandResult>((resolve, reject) => { req.bind(resolve, reject) })
    if (signal !== undefined) {
      req.signal = signal
      req.onAbort = () => { req.answerEarly(new AbortedError(signal.reason)) }
      signal.addEventListener('abort', req.onAbort, { once: true })
    }
    void this.#run(req)
    return result
  }

  /** QEMU's do/while retry loop, inside one slot. Never rejects: it answers the request. */
  async #run (req: Request): Promise<void> {
    let ok = false
    let result: CommandResult
    let error: unknown
    try {
      const admission = this.#admission.admit(req, req.signal)
      if (admission !== undefined) await admission
      try {
        result = await this.#execute(req)
        ok = true
      } finally {
        this.#admission.release()
      }
    } catch (err) {
      error = err
    }
    if (req.onAbort !== undefined) req.signal!.removeEventListener('abort', req.onAbort)
    try {
      const settling = req.settle(ok && !req.abandoned)
      if (settling !== undefined) await settling
    } catch (err) {
      if (ok) {
        ok = false
        error = err
      }
    }
    if (ok) req.answer(result)
    else req.fail(error)
  }

  async #execute (req: Request): Promise<CommandResult> {
    for (;;) {
      if (req.abandoned) throw new AbortedError()
      const link = this.#active
      if (link === null || this.#lifecycle.state !== 'CONNECTED') {
        await this.#waitConnected(req)
        continue
      }
      const gate = req.beforeSend()
      if (gate !== undefined) {
        await gate
        continue
      }
      try {
        const sending = link.sender.send(req)
        if (sending !== undefined) await sending
        try {
          await link.receiver.receive(req)
        } finally {
          link.release(req)
        }
        return this.#outcome(req, link)
      } catch (err) {
        if (!isTransportError(err) || req.abandoned) throw err
        if (req.firstFailureAt < 0) req.firstFailureAt = link.lostAt >= 0 ? link.lostAt : performance.now()
        if (!this.#mayRetry(req)) throw this.#finalError(req, err)
        req.attempts++
        this.stats.retriedRequests++
      }
    }
  }

  /** The reply is read: check it whole, then hand out its result (or its error). */
  #outcome (req: Request, link: Link): CommandResult {
    const reply = req.reply!
    try {
      reply.verify()
    } catch (err) {
      throw link.fail(err)
    }
    try {
      const result = reply.result()
      link.healthy = true
      this.stats.completed(req.type, req.length)
      return result
    } catch (err) {
      if (err instanceof ServerError && err.nbdError === NBD_ESHUTDOWN) {
        // The server is going away, not failing our data: finish what is in flight there,
        // then reconnect; this request is sent again (as a transport failure).
        this.#drain(link, 'the server is shutting down (ESHUTDOWN)', false)
        throw new ConnectionError('the server is shutting down (ESHUTDOWN)', { cause: err })
      }
      link.healthy = true
      if (err instanceof ServerError) this.stats.serverErrors++
      throw err
    }
  }

  /** QEMU's nbd_client_will_reconnect, bounded by the request's own deadline. */
  #mayRetry (req: Request): boolean {
    const state = this.#lifecycle.state
    if (state === 'QUIT' || state === 'CONNECTING_NOWAIT' || this.#closing) return false
    return performance.now() < req.firstFailureAt + this.reconnectDelay
  }

  #finalError (req: Request, err: unknown): NbdError {
    if (this.#lifecycle.state === 'QUIT') return this.#quitError!
    if (this.reconnectDelay > 0 && req.firstFailureAt >= 0 && performance.now() >= req.firstFailureAt + this.reconnectDelay) {
      this.stats.failedByDelay++
      return new ReconnectDelayError(`the server did not come back within the reconnect delay (${this.reconnectDelay} ms)`, { cause: err })
    }
    return toNbdError(err)
  }

  /** Waits for a CONNECTED link (QEMU's nbd_co_do_establish_connection wait), or throws. */
  async #waitConnected (req: Request): Promise<void> {
    switch (this.#lifecycle.state) {
      case 'CONNECTED':
        return
      case 'CONNECTING_WAIT':
        this.#connector.hurry()
        try {
          await this.#outage.wait(req)
        } catch (err) {
          if (err instanceof ReconnectDelayError) this.stats.failedByDelay++
          throw err
        }
        return
      case 'CONNECTING_NOWAIT': {
        const last = this.#connector.lastError ?? undefined
        if (this.#delayExpired) {
          this.stats.failedByDelay++
          throw new ReconnectDelayError(`the server has been unreachable for longer than the reconnect delay (${this.reconnectDelay} ms)`, { cause: last })
        }
        throw new ConnectionError('not connected to the server (reconnecting in the background)', { cause: last })
      }
      case 'QUIT':
        throw this.#quitError!
    }
  }

  // ── connections ──────────────────────────────────────────────────────────────────────

  #onConnected (conn: Connection): void {
    if (this.#lifecycle.state === 'QUIT' || this.#closing) {
      conn.socket.destroy()
      return
    }
    const first = this.#info === null
    if (first) {
      this.#info = conn.info
    } else {
      const problem = checkReconnectedExport(this.#info!, conn.info)
      if (problem !== undefined) {
        // Nothing is sent to a server that is not the one our data went to.
        conn.socket.destroy()
        this.#quit(new ServerChangedError(`the server came back with a different export: ${problem}`))
        return
      }
      this.stats.reconnects++
    }
    const recover = first ? undefined : this.#options.recover
    const link = new Link(conn, recover === undefined ? 'ACTIVE' : 'RECOVERING', {
      counters: this.stats.chunks,
      failed: (l, err) => { this.#linkFailed(l, err) },
      closed: (l) => { this.#links.delete(l) }
    })
    this.#links.add(link)
    if (recover === undefined) {
      this.#install(link)
      return
    }
    const channel: RecoveryChannel = { lostAt: this.#lostAt, submit: (command) => this.#submitOn(link, command) }
    recover(channel).then(() => {
      if (link.state === 'RECOVERING' && link.error === null) this.#install(link)
    }, (err: unknown) => {
      // The replay could not finish here: this connection is lost too; the connector goes on.
      link.fail(err instanceof ProtocolError || isTransportError(err) ? err : new ConnectionError('the replay of acknowledged writes failed', { cause: err }))
    })
  }

  /** A command on one particular link, outside admission and retries (recovery, probes). */
  async #submitOn (link: Link, command: Command): Promise<CommandResult> {
    const req = new Request(command)
    const result = new Promise<CommandResult>((resolve, reject) => { req.bind(resolve, reject) })
    try {
      const sending = link.sender.send(req)
      if (sending !== undefined) await sending
      try {
        await link.receiver.receive(req)
      } finally {
        link.release(req)
      }
      req.answer(this.#outcome(req, link))
    } catch (err) {
      req.fail(err)
    }
    return await result
  }

  #install (link: Link): void {
    link.state = 'ACTIVE'
    this.#active = link
    this.#delayExpired = false
    this.#lostAt = -1
    const first = this.#opened
    this.#opened = null
    this.#lifecycle.set('CONNECTED', first !== null ? 'connected' : 'reconnected', first === null)
    this.#outage.end()
    first?.resolve()
    if (this.#held) this.disconnect()
  }

  #linkFailed (link: Link, error: NbdError): void {
    if (error instanceof ProtocolError) {
      this.#quit(error)
      return
    }
    if (error instanceof TimeoutError) this.stats.timeouts++
    if (link === this.#active) this.#lost(link, error.message)
    else if (link.state === 'RECOVERING') this.#connector.connectionLost(false)
  }

  /** The active link is gone (or going): start the outage and find the server again. */
  #lost (link: Link, reason: string): void {
    if (link !== this.#active) return
    this.#active = null
    if (link.lostAt < 0) link.lostAt = performance.now()
    this.#lostAt = link.lostAt
    if (this.#closing) {
      // Nobody is coming back for these requests: close() fails them rather than reconnect.
      this.#quit(new ClosedError(`client closed after the connection was lost: ${reason}`))
      return
    }
    const delay = this.reconnectDelay
    this.#delayExpired = false
    if (delay > 0) {
      this.#lifecycle.set('CONNECTING_WAIT', reason)
      this.#outage.begin(delay, () => { this.#giveUpWaiting(`the server did not come back within the reconnect delay (${this.reconnectDelay} ms)`) },
        () => new ReconnectDelayError(`the server did not come back within the reconnect delay (${this.reconnectDelay} ms)`, { cause: this.#connector.lastError ?? link.error ?? undefined }))
    } else {
      this.#lifecycle.set('CONNECTING_NOWAIT', reason)
    }
    const healthy = link.healthy || performance.now() - link.openedAt >= (this.#options.backoff?.initialMs ?? 1000)
    if (!this.#held) this.#connector.connectionLost(healthy)
  }

  /**
   * Stops sending on `link` and lets it finish what is on its wire (NBD_CMD_DISC; the server
   * closes once done). `failing`: it stopped answering, so what is on it failed now.
   */
  #drain (link: Link, reason: string, failing: boolean): void {
    const delay = this.reconnectDelay
    const ms = Math.max(MIN_DRAIN_MS, delay, this.#options.requestTimeout)
    const timeout = (): NbdError => new TimeoutError(`the server did not finish the requests of a closed connection within ${ms} ms`)
    if (!failing) {
      link.drain(ms, timeout)
    } else {
      const now = performance.now()
      for (const req of link.table.requests()) if (req.firstFailureAt < 0) req.firstFailureAt = now
      // Their callers hear when their bound passes (at once without a delay); the requests stay
      // on this link, keeping their order, until the server answers or closes it.
      if (delay === 0) {
        for (const req of link.table.requests()) req.answerEarly(new TimeoutError(reason))
        link.drain(ms, timeout)
      } else {
        link.drain(ms, timeout, {
          ms: delay,
          error: () => new ReconnectDelayError(`the server did not come back within the reconnect delay (${delay} ms)`, { cause: new TimeoutError(reason) })
        })
      }
    }
    this.#lost(link, reason)
  }

  #giveUpWaiting (reason: string): void {
    if (this.#lifecycle.state !== 'CONNECTING_WAIT') return
    this.#delayExpired = true
    this.#lifecycle.set('CONNECTING_NOWAIT', reason)
    const last = this.#connector.lastError ?? undefined
    this.#outage.fail(new ReconnectDelayError(reason, { cause: last }))
  }

  /** QEMU's cancel_in_flight: waiting requests fail now instead of at the end of the delay. */
  cancelInFlight (): void {
    if (this.#lifecycle.state === 'CONNECTING_WAIT') this.#giveUpWaiting('requests waiting for the server were cancelled')
  }

  /**
   * Reconnects without failing anything: requests in flight finish on the old connection, new
   * ones wait (up to the reconnect delay) for the new one. When not connected, the connector
   * tries again at once instead of sleeping.
   */
  reconnect (): void {
    this.#held = false
    const link = this.#active
    if (link !== null && this.#lifecycle.state === 'CONNECTED') {
      this.#drain(link, 'reconnect requested', false)
      return
    }
    if (this.#lifecycle.state === 'CONNECTING_NOWAIT' && this.reconnectDelay > 0 && !this.#closing) {
      this.#delayExpired = false
      this.#lifecycle.set('CONNECTING_WAIT', 'reconnect requested')
      this.#outage.begin(this.reconnectDelay, () => { this.#giveUpWaiting(`the server did not come back within the reconnect delay (${this.reconnectDelay} ms)`) },
        () => new ReconnectDelayError(`the server did not come back within the reconnect delay (${this.reconnectDelay} ms)`, { cause: this.#connector.lastError ?? undefined }))
    }
    if (this.#connector.running) this.#connector.kick(true)
    else this.#connector.connectionLost(true)
  }

  /**
   * Disconnects on purpose: in-flight requests finish, then NBD_CMD_DISC. The connector then
   * waits for reconnect(); requests meanwhile wait up to the reconnect delay, then fail.
   */
  disconnect (): void {
    this.#held = true
    const link = this.#active
    if (link !== null && this.#lifecycle.state === 'CONNECTED') this.#drain(link, 'disconnect requested', false)
  }

  /** A snapshot of the requests on the wire (for `show requests`). */
  requests (): Array<{ cookie: number, type: string, offset: bigint, length: number, ageMs: number, attempts: number }> {
    const now = performance.now()
    const out = []
    for (const link of this.#links) {
      for (const req of link.table.requests()) {
        out.push({ cookie: req.cookie, type: commandName(req.type).replace('NBD_CMD_', ''), offset: req.offset, length: req.length, ageMs: Math.round(now - req.sentAt), attempts: req.attempts })
      }
    }
    return out
  }

  #quit (error: NbdError): void {
    if (this.#lifecycle.state === 'QUIT') return
    this.#quitError = error
    this.#lifecycle.set('QUIT', error.message)
    this.#connector.stop()
    this.#outage.fail(error)
    this.#active = null
    for (const link of this.#links) link.fail(error)
    const opened = this.#opened
    this.#opened = null
    opened?.reject(error)
  }

  /**
   * Liveness, per link with requests on it: half a timeout without a byte moving sends a probe
   * (any reply shows the server is there); a whole one declares the link dead, and it drains.
   */
  #checkLiveness (): void {
    const timeout = this.#options.requestTimeout
    const now = performance.now()
    for (const link of this.#links) {
      if (link.progressed(now) || link.error !== null || link.state !== 'ACTIVE' || link.inFlight === 0) continue
      const oldest = link.table.oldestSentAt()
      const quiet = now - Math.max(link.lastProgressAt, oldest)
      if (quiet >= timeout) {
        let oldestReq: Request | undefined
        for (const req of link.table.requests()) if (oldestReq === undefined || req.sentAt < oldestReq.sentAt) oldestReq = req
        this.stats.timeouts++
        this.#drain(link, `no reply to ${commandName(oldestReq?.type ?? NBD_CMD.READ)} within ${timeout} ms, and nothing else moved on the connection`, true)
      } else if (quiet >= timeout / 2 && !link.probing) {
        this.#probe(link)
      }
    }
  }

  /** A cheap request whose only purpose is an answer: READ of one block at offset 0. */
  #probe (link: Link): void {
    const info = link.conn.info
    const length = info.size === 0n ? 0 : Math.min(info.blockSize?.minimum ?? 1, Number(info.size))
    link.probing = true
    const done = (): void => { link.probing = false }
    this.#submitOn(link, { type: NBD_CMD.READ, flags: 0, offset: 0n, length, dest: Buffer.alloc(length) }).then(done, done)
  }

  // ── closing ──────────────────────────────────────────────────────────────────────────

  #closed: Promise<void> | null = null

  /**
   * Connected: waits for every submitted request to finish (each is bounded), sends
   * NBD_CMD_DISC and closes. Not connected: fails the waiting requests at once. Either way the
   * connector stops and nothing is left behind: no timer, no socket.
   */
  close (): Promise<void> {
    this.#closed ??= this.#close()
    return this.#closed
  }

  async #close (): Promise<void> {
    this.#closing = true
    if (this.#lifecycle.state !== 'CONNECTED') {
      // The server is not there: requests waiting for it fail now, the connector stops.
      this.#quit(new ClosedError('client closed while the server was unreachable'))
    }
    await this.#admission.idle()
    const link = this.#active
    if (link !== null && link.error === null && this.#lifecycle.state === 'CONNECTED') {
      this.#active = null
      link.drain(MIN_DRAIN_MS, () => new ClosedError('the server did not close after NBD_CMD_DISC'))
    }
    await Promise.all([...this.#links].map((l) => closedWithin(l, MIN_DRAIN_MS)))
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
    this.#outage.stop()
    this.#admission.rejectWaiting(error)
    if (this.#tick !== null) clearInterval(this.#tick)
    this.#tick = null
    for (const link of this.#links) link.fail(error)
  }
}

function closedWithin (link: Link, ms: number): Promise<void> {
  const socket = link.conn.socket
  if (socket.destroyed || link.state === 'CLOSED') return Promise.resolve()
  return new Promise((resolve) => {
    const timer = setTimeout(() => { socket.destroy() }, ms)
    socket.once('close', () => { clearTimeout(timer); resolve() })
  })
}
