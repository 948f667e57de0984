/**
 * The request engine of one NBD connection, after QEMU's block/nbd.c once it dropped its
 * always-running connection coroutine (4ddb5d2fde). Each request is QEMU's coroutine, written
 * as continuations around its one promise (the caller's): every step runs synchronously as far
 * as it can, and only the rare waits (a slot, the outage, the ledger's gate, a full socket)
 * are promises of their own:
 *
 *   submit ─► slot (Admission) ─► a CONNECTED link (or wait in the outage: Connections)
 *          ─► send under sendMutex (Sender) ─► receiveReplies under receiveMutex (Receiver)
 *          ─► its reply, step by step (Reply) ─► settled: its life on the wire is over ─► answer
 *
 * Requests never open sockets: the background connector does (Connections), and while the
 * server is away requests wait, each until its own deadline (the reconnect delay from its
 * first failure), and are sent again from scratch on the next link. Server errors are never
 * retried.
 *
 * Invariants:
 *   - A request lives on the wire from its first send until its reply or its link's close;
 *     the `settled` hook reports that end, and only then may a later overlapping write or a
 *     FLUSH go. The caller may be answered earlier (abort, or its deadline while its link
 *     drains).
 *   - A request answered early is never sent again.
 *   - A link that stops answering is not torn down with commands on it: it drains (see
 *     Link), so a write the server may still run is never re-sent where the original could
 *     land after the copy.
 *
 *   QEMU                      here
 *   s->send_mutex             Sender's sendMutex           (per connection)
 *   s->receive_mutex          Receiver's receiveMutex      (per connection)
 *   s->free_sema, in_flight   Admission, CookieTable       (slots.ts)
 *   s->requests[i].receiving  Request.receiving (woken: Request.replied, at its reply's end)
 *   s->state                  Lifecycle (CONNECTED, CONNECTING_WAIT, CONNECTING_NOWAIT, QUIT)
 *   reconnect_delay_timer     Outage (per request: from its first failure)
 *   nbd_co_establish_connection   Connections.waitConnected, the Connector
 */
import { EventEmitter } from 'node:events'
import { performance } from 'node:perf_hooks'
import { AbortedError, ClosedError, ConnectionError, NbdError, ServerError, TimeoutError, isTransportError } from '../../errors.ts'
import { NBD_CMD } from '../../protocol/constants.ts'
import { NBD_ESHUTDOWN } from '../../protocol/errno.ts'
import { commandName } from '../../protocol/names.ts'
import type { Establish } from '../../connector/connection.ts'
import type { BackoffOptions } from '../../connector/backoff.ts'
import type { ExportInfo } from '../../connector/export-info.ts'
import { ClientStats, type StatsSnapshot } from '../../stats/client-stats.ts'
import { Connections, MIN_DRAIN_MS, type Vet } from './connections.ts'
import type { NbdClientState, StateChange } from './lifecycle.ts'
import type { Link } from './link.ts'
import type { CommandResult } from './reply.ts'
import { Request, type Command, type SubmitHooks } from './request.ts'
import { Admission } from './slots.ts'

export type { Vet, RecoveryChannel } from './connections.ts'

/** What the client's write ledger (Ordering) hears from, and asks of, every engine. */
export interface LedgerHooks {
  /**
   * Asked before every send of every request, on every connection of the client: undefined to
   * go on, or a wait (the write ledger's replay: Ordering.gate). Replay requests skip it.
   */
  readonly gate?: ((req: Request) => Promise<void> | undefined) | undefined
  /**
   * A connection stopped carrying requests (lost, or drained); `unflushed`: it acknowledged
   * write-like commands that no FLUSH of its own covered (a new server epoch: Ordering).
   */
  readonly lost?: ((unflushed: boolean) => void) | undefined
}

export interface EngineOptions extends LedgerHooks {
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
  /** A connection over a path of several failed (see Connection.path). */
  readonly pathFailed?: (path: number, reason: string) => void
  /** Multipath: another path is usable now (see ConnectionsOptions.alternative). */
  readonly alternative?: () => boolean
  /** Runs on every connection, the first included, before it takes requests. */
  readonly vet?: Vet
}

export class Engine extends EventEmitter<{ state: [StateChange] }> {
  readonly stats = new ClientStats()
  readonly #admission: Admission
  readonly #connections: Connections
  readonly #gate: ((req: Request) => Promise<void> | undefined) | undefined
  #closed: Promise<void> | null = null

  private constructor (options: EngineOptions) {
    super()
    this.#admission = new Admission(options.maxInFlight)
    this.#gate = options.gate
    this.#connections = new Connections({
      ...options,
      stats: this.stats,
      emit: (change) => { this.emit('state', change) },
      waiting: () => this.#admission.admitted > 0,
      runOn: (link, command) => this.#runOn(link, command)
    })
  }

  /** Connects for the first time (see Connections.open). */
  static async open (options: EngineOptions, signal?: AbortSignal): Promise<Engine> {
    const engine = new Engine(options)
    try {
      await engine.#connections.open(signal)
      return engine
    } catch (err) {
      engine.destroy(err instanceof NbdError ? err : new ConnectionError(String(err)))
      throw err
    }
  }

  get state (): NbdClientState { return this.#connections.state }
  /** What the first connection negotiated (later connections must match it). */
  get info (): ExportInfo { return this.#connections.info }
  /** The active connection's meta contexts (ids differ between connections). */
  get contexts (): ReadonlyMap<number, string> { return this.#connections.active?.conn.info.contexts ?? new Map() }
  /** The active connection runs over TLS (undefined while there is none). */
  get tls (): boolean | undefined { return this.#connections.active?.tls }
  /** With several paths: the one the active connection runs over (0-based). */
  get path (): number | undefined { return this.#connections.active?.conn.path }
  get maxInFlight (): number { return this.#admission.max }
  set maxInFlight (n: number) { this.#admission.max = n }
  /** Requests waiting for a slot. */
  get queued (): number { return this.#admission.waiting }
  get lastConnectError (): Error | null { return this.#connections.lastConnectError }
  /** How long requests wait for a lost server (ms); changeable at run time. */
  get reconnectDelay (): number { return this.#connections.reconnectDelay }
  set reconnectDelay (ms: number) { this.#connections.reconnectDelay = ms }

  /** Requests on the wire, over every link still open. */
  get inFlight (): number {
    let n = 0
    for (const link of this.#connections.links) n += link.inFlight
    return n
  }

  snapshot (): StatsSnapshot {
    this.stats.inFlight = this.inFlight
    return this.stats.snapshot()
  }

  /**
   * Runs one command. The promise settles once the engine no longer touches the caller's
   * buffers; `hooks` see each send and the end of its life on the wire (see SubmitHooks).
   *
   * It is the request's one promise. The steps below are QEMU's coroutine written as
   * continuations: each runs synchronously as far as it can, and only the rare waits (a slot,
   * the outage, the ledger's gate, a full socket) are promises of their own.
   *
   *   submit ─► #admitted ─► #attempt ─► send ─► receiver.receive ─► #replied ─► #end
   *                              ▲                                       │ transport error,
   *                              └───────────── #failed (retry) ◄────────┘ bound not passed
   */
  submit (command: Command, signal?: AbortSignal, hooks?: SubmitHooks): Promise<CommandResult> {
    if (signal?.aborted === true || this.#connections.closing) {
      void hooks?.settled?.(false)
      return Promise.reject(signal?.aborted === true ? new AbortedError(signal.reason) : this.#connections.quitError ?? new ClosedError('client is closed'))
    }
    const req = new Request(command, hooks)
    const result = new Promise<CommandResult>((resolve, reject) => { req.bind(resolve, reject) })
    if (signal !== undefined) {
      req.signal = signal
      req.onAbort = () => { req.answerEarly(new AbortedError(signal.reason)) }
      signal.addEventListener('abort', req.onAbort, { once: true })
    }
    req.replied = this.#replied
    let admission: Promise<void> | undefined
    try {
      admission = this.#admission.admit(req, req.signal)
    } catch (err) {
      this.#end(req, false, undefined, err)
      return result
    }
    if (admission === undefined) this.#admitted(req)
    else admission.then(() => { this.#admitted(req) }, (err: unknown) => { this.#end(req, false, undefined, err) })
    return result
  }

  #admitted (req: Request): void {
    // A request in doubt (see Request) gives its slot back at once: it may stay on the wire
    // of a connection that was given up for as long as that stays open.
    req.slots = this.#admission
    this.#attempt(req)
  }

  /**
   * QEMU's do/while retry loop, inside one slot: one more attempt at sending `req`. Called
   * from promise callbacks too, so it never throws: whatever goes wrong answers the request.
   */
  #attempt (req: Request): void {
    try {
      this.#tryAttempt(req)
    } catch (err) {
      this.#end(req, false, undefined, err)
    }
  }

  #tryAttempt (req: Request): void {
    const connections = this.#connections
    if (req.abandoned) {
      this.#end(req, false, undefined, new AbortedError())
      return
    }
    const link = connections.active
    if (link === null || connections.state !== 'CONNECTED') {
      this.#later(req, connections.waitConnected(req))
      return
    }
    const gate = this.#gate?.(req) ?? req.beforeSend()
    if (gate !== undefined) {
      this.#later(req, gate)
      return
    }
    let sending: Promise<void> | undefined
    try {
      sending = link.sender.send(req)
    } catch (err) {
      this.#failed(req, link, err)
      return
    }
    if (sending === undefined) link.receiver.receive(req)
    else sending.then(() => { link.receiver.receive(req) }, (err: unknown) => { this.#failed(req, link, err) })
  }

  /** A rare wait before sending; then the request looks for a connection again. */
  #later (req: Request, wait: Promise<void>): void {
    wait.then(() => { this.#attempt(req) }, (err: unknown) => { this.#end(req, false, undefined, err) })
  }

  /**
   * The receiver read `req`'s reply whole (`error` null) or its link failed under it. Never
   * throws: the receiver calls it for one request after another. `#repliedOn` is the same for
   * a command run on one link (#runOn), which is never retried.
   */
  readonly #replied = (req: Request, link: Link, error: Error | null): void => { this.#take(req, link, error, false) }
  readonly #repliedOn = (req: Request, link: Link, error: Error | null): void => { this.#take(req, link, error, true) }

  #take (req: Request, link: Link, error: Error | null, onLink: boolean): void {
    try {
      // The outcome is taken before the link lets go of the request: a closing link that is
      // now idle decides on its own FLUSH by what it acknowledged, this write included.
      let result: CommandResult
      let failure: unknown = error
      if (error === null) {
        try {
          result = this.#outcome(req, link)
        } catch (err) {
          failure = err
        }
      }
      link.release(req)
      if (failure === null) this.#finish(req, true, result, undefined, onLink)
      else if (onLink) this.#endOn(req, false, undefined, failure)
      else this.#failed(req, link, failure)
    } catch (err) {
      this.#finish(req, false, undefined, err, onLink)
    }
  }

  #finish (req: Request, ok: boolean, result: CommandResult, error: unknown, onLink: boolean): void {
    if (onLink) this.#endOn(req, ok, result, error)
    else this.#end(req, ok, result, error)
  }

  /** An attempt failed: sent again after a transport failure within the bound, else the end. */
  #failed (req: Request, link: Link, err: unknown): void {
    if (!isTransportError(err) || req.abandoned) {
      this.#end(req, false, undefined, err)
      return
    }
    const connections = this.#connections
    if (req.firstFailureAt < 0) req.firstFailureAt = link.lostAt >= 0 ? link.lostAt : performance.now()
    if (!connections.mayRetry(req)) {
      this.#end(req, false, undefined, connections.finalError(req, err))
      return
    }
    req.attempts++
    this.stats.retriedRequests++
    // In a later turn: the failure that caused this may still be unwinding (Link.fail).
    queueMicrotask(() => { this.#attempt(req) })
  }

  /** The life on the wire is over: the slot goes back, whoever orders against it hears, then the caller. */
  #end (req: Request, ok: boolean, result: CommandResult, error: unknown): void {
    if (req.ended) return
    req.ended = true
    req.releaseSlot()
    if (req.onAbort !== undefined) req.signal!.removeEventListener('abort', req.onAbort)
    let settling: void | Promise<void>
    try {
      settling = req.settle(ok && !req.abandoned)
    } catch (err) {
      if (ok) req.fail(err)
      else req.fail(error)
      return
    }
    if (settling === undefined) {
      if (ok) req.answer(result)
      else req.fail(error)
      return
    }
    settling.then(() => {
      if (ok) req.answer(result)
      else req.fail(error)
    }, (err: unknown) => { req.fail(ok ? err : error) })
  }

  /**
   * One command on one particular link, outside admission and retries (vetting, probes, the
   * replay). Answered early like any request when its link gives up on it (in doubt); `hooks`
   * hear of that and of the end of its life on the wire.
   */
  #runOn (link: Link, command: Command, hooks?: SubmitHooks): Promise<CommandResult> {
    const req = new Request(command, hooks)
    const result = new Promise<CommandResult>((resolve, reject) => { req.bind(resolve, reject) })
    req.replied = this.#repliedOn
    let sending: Promise<void> | undefined
    try {
      sending = link.sender.send(req)
    } catch (err) {
      this.#endOn(req, false, undefined, err)
      return result
    }
    if (sending === undefined) link.receiver.receive(req)
    else sending.then(() => { link.receiver.receive(req) }, (err: unknown) => { this.#endOn(req, false, undefined, err) })
    return result
  }

  #endOn (req: Request, ok: boolean, result: CommandResult, error: unknown): void {
    if (req.ended) return
    req.ended = true
    try {
      void req.settle(ok)
    } catch (err) {
      if (ok) {
        req.fail(err)
        return
      }
    }
    if (ok) req.answer(result)
    else req.fail(error)
  }

  /** The reply is read: check it whole, then hand out its result (or its error). */
  #outcome (req: Request, link: Link): CommandResult {
    const reply = req.reply!
    try {
      reply.verify()
    } catch (err) {
      throw link.fail(err)
    }
    link.healthy = true
    try {
      const result = reply.result()
      this.stats.completed(req.type, req.length)
      // A FLUSH covers the writes that completed before it was sent, not those during it.
      if (req.type === NBD_CMD.FLUSH) {
        if (link.lastWriteAt < req.sentAt) link.unflushed = false
      } else if (req.type === NBD_CMD.WRITE || req.type === NBD_CMD.WRITE_ZEROES || req.type === NBD_CMD.TRIM) {
        link.unflushed = true
        link.lastWriteAt = performance.now()
        // Recorded now, while this link is known to be alive: a loss after this starts a new
        // epoch, whose replay includes it (see WriteLedger).
        req.acked()
      }
      return result
    } catch (err) {
      if (err instanceof ServerError && err.nbdError === NBD_ESHUTDOWN) {
        // The server is going away, not failing our data: finish what is in flight there,
        // then reconnect; this request is sent again (as a transport failure).
        this.#connections.drain(link, 'the server is shutting down (ESHUTDOWN)', false)
        throw new ConnectionError('the server is shutting down (ESHUTDOWN)', { cause: err })
      }
      if (err instanceof ServerError) this.stats.serverErrors++
      throw err
    }
  }

  /**
   * The path checker's look at the live connection: one command on it now, outside admission
   * and retries (a full queue must not hide a working path, nor a retry elsewhere a dead one).
   * Rejects when not connected, or with a TimeoutError once `ms` pass; the command stays on
   * the wire until answered, so give it one nothing orders against (a READ).
   */
  async check (command: Command, ms: number): Promise<void> {
    const link = this.#connections.active
    if (link === null || this.#connections.state !== 'CONNECTED') throw new ConnectionError('not connected')
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => { reject(new TimeoutError(`no answer within ${ms} ms`)) }, ms)
    })
    const running = this.#runOn(link, command)
    running.catch(() => {})
    try {
      await Promise.race([running, late])
    } finally {
      clearTimeout(timer)
    }
  }

  /** QEMU's cancel_in_flight: waiting requests fail now instead of at the end of the delay. */
  cancelInFlight (): void { this.#connections.cancelInFlight() }
  /**
   * One command of the write ledger's replay, on the active connection now: outside admission,
   * retries and the gate (it is what the gate waits for). Rejects when not connected.
   */
  async replay (command: Command, hooks?: SubmitHooks): Promise<CommandResult> {
    const link = this.#connections.active
    if (link === null || this.#connections.state !== 'CONNECTED') throw new ConnectionError('not connected')
    return await this.#runOn(link, command, hooks)
  }

  /** Reconnects without failing anything (see Connections.reconnect). */
  reconnect (): void { this.#connections.reconnect() }
  /** Gives the connection up as failing (see Connections.abandon). */
  abandon (reason: string): void { this.#connections.abandon(reason) }
  /** Disconnects on purpose until reconnect() (see Connections.disconnect). */
  disconnect (): void { this.#connections.disconnect() }

  /** A snapshot of the requests on the wire (for `show requests`). */
  requests (): Array<{ cookie: number, type: string, offset: bigint, length: number, ageMs: number, attempts: number }> {
    const now = performance.now()
    const out = []
    for (const link of this.#connections.links) {
      for (const req of link.table.requests()) {
        out.push({ cookie: req.cookie, type: commandName(req.type).replace('NBD_CMD_', ''), offset: req.offset, length: req.length, ageMs: Math.round(now - req.sentAt), attempts: req.attempts })
      }
    }
    return out
  }

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
    const connections = this.#connections
    connections.closing = true
    // The server is not there: requests waiting for it fail now, the connector stops.
    if (connections.state !== 'CONNECTED') connections.quit(new ClosedError('client closed while the server was unreachable'))
    await this.#admission.idle()
    const link = connections.active
    if (link !== null && link.error === null && connections.state === 'CONNECTED') {
      connections.active = null
      link.drain(MIN_DRAIN_MS, () => new ClosedError('the server did not close after NBD_CMD_DISC'))
    }
    await Promise.all([...connections.links].map((l) => closedWithin(l, MIN_DRAIN_MS)))
    this.#shutdown(new ClosedError('client closed'))
  }

  /** Fails everything now: waiting and in-flight requests reject, nothing is left running. */
  destroy (error: NbdError = new ClosedError('client destroyed')): void {
    this.#connections.closing = true
    this.#shutdown(error)
  }

  #shutdown (error: NbdError): void {
    this.#connections.shutdown(error)
    this.#admission.rejectWaiting(error)
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
