/**
 * The connections of one engine over time (QEMU's connection lifecycle): the background
 * connector, the identity check, the outage while there is none, the liveness check, and
 * every state change (Lifecycle). Each connection's own states are Link's table.
 *
 *   connector ─► connection ─► same export? ─no─► QUIT (nothing is sent to another export)
 *                                  │ yes
 *                                  ▼
 *                  VETTING link (multipath: the identity bytes), else straight to
 *                  ACTIVE link: CONNECTED, the outage ends, its waiters go (behind the
 *                                  │ write ledger's gate: Ordering replays first)
 *                                  │ lost: an error, EOF, liveness, ESHUTDOWN, reconnect()
 *                                  ▼
 *                  DRAINING (finishes its wire) + an outage: CONNECTING_WAIT (or NOWAIT)
 *                  + the connector, back-off counting a connection that never proved itself
 *                  + the ledger told (`lost`): a new server epoch when it acknowledged
 *                    writes no FLUSH of its own covered
 */
import { performance } from 'node:perf_hooks'
import {
  AbortedError, ClosedError, ConnectionError, NbdError, ProtocolError, ReconnectDelayError, ServerChangedError,
  TimeoutError, isTransportError
} from '../../errors.ts'
import { NBD_CMD, NBD_FLAG } from '../../protocol/constants.ts'
import { commandName } from '../../protocol/names.ts'
import type { Connection, Establish } from '../../connector/connection.ts'
import { Connector } from '../../connector/connector.ts'
import type { BackoffOptions } from '../../connector/backoff.ts'
import type { ExportInfo } from '../../connector/export-info.ts'
import type { ClientStats } from '../../stats/client-stats.ts'
import { deferred, type Deferred } from '../../util/deferred.ts'
import { checkReconnectedExport } from '../reconnect-check.ts'
import { Lifecycle, Outage, type NbdClientState, type StateChange } from './lifecycle.ts'
import { Link, toNbdError } from './link.ts'
import { checkLiveness } from './liveness.ts'
import type { CommandResult } from './reply.ts'
import type { Command, Request } from './request.ts'

/** A new connection, before it takes requests: what may be sent on it first (multipath's identity check). */
export interface RecoveryChannel {
  /** Multipath: the path (0-based) it runs over. */
  readonly path: number | undefined
  /** Sends on this connection only; a failure there fails the recovery (and the connection). */
  submit: (command: Command) => Promise<CommandResult>
}

export type Vet = (channel: RecoveryChannel) => Promise<void>

export interface ConnectionsOptions {
  readonly establish: Establish
  /** Liveness: a link that moves no byte for this long while requests wait is dead (ms, 0 = never). */
  readonly requestTimeout: number
  readonly reconnectDelay: number
  readonly openTimeout: number
  readonly backoff?: BackoffOptions | undefined
  readonly label?: string | undefined
  readonly watchPath?: string | undefined
  /** A link stopped carrying requests; `unflushed`: see EngineOptions.lost. */
  readonly lost?: ((unflushed: boolean) => void) | undefined
  readonly stats: ClientStats
  readonly emit: (change: StateChange) => void
  /** Requests wait for a connection, or hold a slot: keep reconnect attempts dense. */
  readonly waiting: () => boolean
  /** Sends one command on one link, outside admission and retries (recovery, probes). */
  readonly runOn: (link: Link, command: Command) => Promise<CommandResult>
  /** A connection over `path` (see Connection.path) failed: the path may be bad. */
  readonly pathFailed?: ((path: number, reason: string) => void) | undefined
  /**
   * Multipath: another path is usable now. Then a lost connection is a failover, not an
   * outage, and requests wait for it even with no reconnect delay (no-path-retry bounds only
   * the time with every path down): at most FAILOVER_MS.
   */
  readonly alternative?: (() => boolean) | undefined
  /**
   * Runs on every connection, the first included, before it takes requests: multipath's
   * identity bytes. A rejection fails the connection.
   */
  readonly vet?: Vet | undefined
}

/** How long a failover to a usable path may take before its requests count as failed. */
export const FAILOVER_MS = 10_000

/** How long a link that is closing may take to finish what is on its wire, at least. */
export const MIN_DRAIN_MS = 1000

/** What requests hear while disconnect() holds the client. */
const HELD = 'not connected to the server: disconnect() holds the client until reconnect()'

export class Connections {
  /** How long requests wait for a lost server (ms); changeable at run time. */
  reconnectDelay: number
  readonly #options: ConnectionsOptions
  readonly #lifecycle: Lifecycle
  readonly #outage = new Outage()
  readonly #connector: Connector
  readonly links = new Set<Link>()
  /** The link new requests go to, while CONNECTED. */
  active: Link | null = null
  /** What the first connection negotiated: later ones must match it. */
  #info: ExportInfo | null = null
  quitError: NbdError | null = null
  /** NOWAIT because the outage deadline passed (the errors then say so). */
  #delayExpired = false
  /** Disconnected on purpose (disconnect()): the connector waits for reconnect(). */
  #held = false
  closing = false
  #tick: NodeJS.Timeout | null = null
  readonly #opened: Deferred<void> = deferred()
  #first = true

  /** The bound on waiting for a connection now: the reconnect delay, or a failover's. */
  get #bound (): number {
    if (this.reconnectDelay > 0) return this.reconnectDelay
    return this.#options.alternative?.() === true ? FAILOVER_MS : 0
  }

  constructor (options: ConnectionsOptions) {
    this.#options = options
    this.reconnectDelay = options.reconnectDelay
    this.#lifecycle = new Lifecycle(options.label, options.emit)
    this.#opened.promise.catch(() => {})
    this.#connector = new Connector({
      establish: options.establish,
      ...(options.backoff !== undefined && { backoff: options.backoff }),
      ...(options.watchPath !== undefined && { watchPath: options.watchPath }),
      waiting: () => this.#outage.waiting > 0 || options.waiting(),
      onConnected: (conn) => { this.#onConnected(conn) },
      onAttemptFailed: (err, _attempt, retrying) => {
        options.stats.connectFailures++
        // Only a first connect without an open timeout stops retrying: it failed for good.
        if (!retrying) this.quit(toNbdError(err))
      }
    })
    if (options.requestTimeout > 0) {
      const tick = Math.max(25, Math.min(1000, options.requestTimeout / 4))
      this.#tick = setInterval(() => { this.#checkLiveness() }, tick)
      this.#tick.unref()
    }
  }

  get state (): NbdClientState {
    return this.#lifecycle.state
  }

  get info (): ExportInfo {
    if (this.#info === null) throw new ClosedError('not connected')
    return this.#info
  }

  get lastConnectError (): Error | null {
    return this.#connector.lastError
  }

  /**
   * The first connect. With openTimeout > 0 the connector retries with back-off until then;
   * otherwise one attempt decides.
   */
  async open (signal: AbortSignal | undefined): Promise<void> {
    const openTimeout = this.#options.openTimeout
    this.#connector.retry = openTimeout > 0
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_resolve, reject) => {
      if (openTimeout <= 0) return
      timer = setTimeout(() => {
        const last = this.#connector.lastError
        reject(new TimeoutError(`could not connect within ${openTimeout} ms${last === null ? '' : `: ${last.message}`}`, { cause: last ?? undefined }))
      }, openTimeout)
    })
    const aborted = new Promise<never>((_resolve, reject) => {
      if (signal === undefined) return
      const onAbort = (): void => { reject(new AbortedError(signal.reason)) }
      if (signal.aborted) onAbort()
      else signal.addEventListener('abort', onAbort, { once: true })
      this.#opened.promise.finally(() => { signal.removeEventListener('abort', onAbort) }).catch(() => {})
    })
    aborted.catch(() => {})
    try {
      if (signal?.aborted === true) throw new AbortedError(signal.reason)
      this.#connector.kick()
      await Promise.race([this.#opened.promise, timeout, aborted])
      this.#connector.retry = true
    } finally {
      clearTimeout(timer)
    }
  }

  /** Waits for a CONNECTED link (QEMU's nbd_co_do_establish_connection wait), or throws. */
  async waitConnected (req: Request): Promise<void> {
    switch (this.#lifecycle.state) {
      case 'CONNECTED':
        return
      case 'CONNECTING_WAIT':
        this.#connector.hurry()
        try {
          await this.#outage.wait(req)
        } catch (err) {
          if (err instanceof ReconnectDelayError) this.#options.stats.failedByDelay++
          throw err
        }
        return
      case 'CONNECTING_NOWAIT': {
        const last = this.#connector.lastError ?? undefined
        if (this.#held) throw new ConnectionError(HELD)
        if (this.#delayExpired) {
          this.#options.stats.failedByDelay++
          throw new ReconnectDelayError(`the server has been unreachable for longer than the reconnect delay (${this.#bound} ms)`, { cause: last })
        }
        throw new ConnectionError('not connected to the server (reconnecting in the background)', { cause: last })
      }
      case 'QUIT':
        throw this.quitError!
    }
  }

  /** QEMU's nbd_client_will_reconnect, bounded by the request's own deadline. */
  mayRetry (req: Request): boolean {
    const state = this.#lifecycle.state
    if (state === 'QUIT' || state === 'CONNECTING_NOWAIT' || this.closing) return false
    return performance.now() < req.firstFailureAt + this.#bound
  }

  /** What a request that may not be retried fails with. */
  finalError (req: Request, err: unknown): NbdError {
    if (this.#lifecycle.state === 'QUIT') return this.quitError!
    if (this.#bound > 0 && req.firstFailureAt >= 0 && performance.now() >= req.firstFailureAt + this.#bound) {
      this.#options.stats.failedByDelay++
      return new ReconnectDelayError(`the server did not come back within the reconnect delay (${this.#bound} ms)`, { cause: err })
    }
    return toNbdError(err)
  }

  // ── a new connection ─────────────────────────────────────────────────────────────────

  #onConnected (conn: Connection): void {
    if (this.#lifecycle.state === 'QUIT' || this.closing) {
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
        this.quit(new ServerChangedError(`the server came back with a different export: ${problem}`))
        return
      }
      this.#options.stats.reconnects++
    }
    const recover = this.#options.vet
    const link = new Link(conn, recover === undefined ? 'ACTIVE' : 'VETTING', {
      counters: this.#options.stats.chunks,
      failed: (l, err) => { this.#linkFailed(l, err) },
      closed: (l) => { this.links.delete(l) }
    })
    this.links.add(link)
    if (recover === undefined) {
      this.#install(link)
      return
    }
    const channel: RecoveryChannel = { path: conn.path, submit: (command) => this.#options.runOn(link, command) }
    recover(channel).then(() => {
      if (link.state === 'VETTING' && link.error === null) this.#install(link)
    }, (err: unknown) => {
      // The vetting could not finish here: this connection is lost too; the connector goes on.
      const own = err instanceof ProtocolError || err instanceof ServerChangedError || isTransportError(err)
      link.fail(own ? err : new ConnectionError('the new connection could not be checked', { cause: err }))
    })
  }

  #install (link: Link): void {
    link.to('ACTIVE')
    this.active = link
    this.#delayExpired = false
    const first = this.#first
    this.#first = false
    this.#lifecycle.set('CONNECTED', first ? 'connected' : 'reconnected', !first)
    this.#outage.end()
    if (first) this.#opened.resolve()
    if (this.#held) this.disconnect()
  }

  // ── losing one ───────────────────────────────────────────────────────────────────────

  #linkFailed (link: Link, error: NbdError): void {
    // A link that was drained told the ledger when it stopped taking requests (drain()).
    if (link === this.active || link.state === 'VETTING') this.#options.lost?.(link.unflushed)
    // A link that was closing on purpose says nothing about its path; one that was in use does.
    if (link.conn.path !== undefined && (link === this.active || link.state === 'VETTING')) this.#options.pathFailed?.(link.conn.path, error.message)
    if (error instanceof ProtocolError) {
      this.quit(error)
      return
    }
    if (error instanceof TimeoutError) this.#options.stats.timeouts++
    if (link === this.active) this.#lost(link, error.message)
    else if (link.state === 'VETTING') this.#connector.connectionLost(false)
  }

  /** The active link is gone (or going): start the outage and find the server again. */
  #lost (link: Link, reason: string): void {
    if (link !== this.active) return
    this.active = null
    if (link.lostAt < 0) link.lostAt = performance.now()
    if (this.closing) {
      // Nobody is coming back for these requests: close() fails them rather than reconnect.
      this.quit(new ClosedError(`client closed after the connection was lost: ${reason}`))
      return
    }
    this.#delayExpired = false
    if (this.#bound > 0) {
      this.#lifecycle.set('CONNECTING_WAIT', reason)
      this.#beginOutage(link.error ?? undefined)
    } else {
      this.#lifecycle.set('CONNECTING_NOWAIT', reason)
    }
    const healthy = link.healthy || performance.now() - link.openedAt >= (this.#options.backoff?.initialMs ?? 1000)
    if (!this.#held) this.#connector.connectionLost(healthy)
  }

  #beginOutage (cause: Error | undefined): void {
    const delay = this.#bound
    const message = this.#held
      ? `${HELD} (requests waited the reconnect delay, ${delay} ms)`
      : `the server did not come back within the reconnect delay (${delay} ms)`
    this.#outage.begin(delay, () => { this.#giveUpWaiting(message) },
      () => new ReconnectDelayError(message, { cause: this.#connector.lastError ?? cause }))
  }

  /**
   * Stops sending on `link` and lets it finish what is on its wire (NBD_CMD_DISC; the server
   * closes once done). `failing`: it stopped answering, so what is on it failed now: its
   * callers hear when their bound passes (at once without a delay), while the requests stay on
   * the link, keeping their order, until the server answers or closes it.
   */
  drain (link: Link, reason: string, failing: boolean, report = true): void {
    const delay = this.#bound
    // A live server (a planned drain) is given its liveness bound to finish; one that stopped
    // answering only its callers' bound: past that, whatever waited on its writes is told now
    // (IN_DOUBT) rather than wait on for a server that may never answer.
    const ms = failing ? Math.max(MIN_DRAIN_MS, delay) : Math.max(MIN_DRAIN_MS, delay, this.#options.requestTimeout)
    const timeout = (): NbdError => new TimeoutError(`the server did not finish the requests of a closed connection within ${ms} ms`)
    // What this connection acknowledged (and what it may still acknowledge) is not covered by a
    // FLUSH on another connection (not without multi-conn, never on another server): a new
    // epoch, whose replay waits for this wire and writes it all again on the next connection.
    if (link === this.active) this.#options.lost?.(link.unflushed || link.writesOnWire)
    const flushFirst = (link.conn.info.flags & NBD_FLAG.SEND_FLUSH) === 0
      ? undefined
      : async (): Promise<void> => { if (link.unflushed) await this.#options.runOn(link, { type: NBD_CMD.FLUSH, flags: 0, offset: 0n, length: 0 }) }
    if (!failing) {
      link.drain(ms, timeout, undefined, flushFirst)
    } else {
      if (report && link.conn.path !== undefined) this.#options.pathFailed?.(link.conn.path, reason)
      const now = performance.now()
      for (const req of link.table.requests()) if (req.firstFailureAt < 0) req.firstFailureAt = now
      if (delay === 0) {
        for (const req of link.table.requests()) req.answerEarly(new TimeoutError(reason))
        link.drain(ms, timeout, undefined, flushFirst)
      } else {
        link.drain(ms, timeout, {
          ms: delay,
          error: () => new ReconnectDelayError(`the server did not come back within the reconnect delay (${delay} ms)`, { cause: new TimeoutError(reason) })
        }, flushFirst)
      }
    }
    this.#lost(link, reason)
  }

  #giveUpWaiting (reason: string): void {
    if (this.#lifecycle.state !== 'CONNECTING_WAIT') return
    this.#delayExpired = true
    this.#lifecycle.set('CONNECTING_NOWAIT', reason)
    this.#outage.fail(new ReconnectDelayError(reason, { cause: this.#connector.lastError ?? undefined }))
  }

  // ── asked for ────────────────────────────────────────────────────────────────────────

  /**
   * The active connection is given up as failing (multipath: its path failed): nothing more is
   * sent there, what is on its wire drains with a failing connection's bounds, and the
   * connector finds the next one.
   */
  abandon (reason: string): void {
    const link = this.active
    // Its path is known to be down already: that failure, not this consequence, is the record.
    if (link !== null && this.#lifecycle.state === 'CONNECTED') this.drain(link, reason, true, false)
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
    const link = this.active
    if (link !== null && this.#lifecycle.state === 'CONNECTED') {
      // Closed on purpose (a path switch, an admin): not a failed attempt, so no back-off.
      link.healthy = true
      this.drain(link, 'reconnect requested', false)
      return
    }
    if (this.#lifecycle.state === 'CONNECTING_NOWAIT' && this.#bound > 0 && !this.closing) {
      this.#delayExpired = false
      this.#lifecycle.set('CONNECTING_WAIT', 'reconnect requested')
      this.#beginOutage(undefined)
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
    const link = this.active
    if (link !== null && this.#lifecycle.state === 'CONNECTED') this.drain(link, 'disconnect requested', false)
  }

  /** For good: a protocol violation, a changed server, close() or destroy(). */
  quit (error: NbdError): void {
    if (this.#lifecycle.state === 'QUIT') return
    this.quitError = error
    this.#lifecycle.set('QUIT', error.message)
    this.#connector.stop()
    this.#outage.fail(error)
    this.active = null
    for (const link of this.links) link.fail(error)
    this.#opened.reject(error)
  }

  /** Stops everything that runs on its own: connector, timers, sockets. */
  shutdown (error: NbdError): void {
    this.quit(error)
    this.#connector.stop()
    this.#outage.stop()
    if (this.#tick !== null) clearInterval(this.#tick)
    this.#tick = null
    for (const link of this.links) link.fail(error)
  }

  #checkLiveness (): void {
    const timeout = this.#options.requestTimeout
    for (const [link, verdict] of checkLiveness(this.links, timeout, performance.now())) {
      if (verdict === 'probe') {
        this.#probe(link)
        continue
      }
      let oldest: Request | undefined
      for (const req of link.table.requests()) if (oldest === undefined || req.sentAt < oldest.sentAt) oldest = req
      this.#options.stats.timeouts++
      this.drain(link, `no reply to ${commandName(oldest?.type ?? NBD_CMD.READ)} within ${timeout} ms, and nothing else moved on the connection`, true)
    }
  }

  /** A cheap request whose only purpose is an answer: READ of one block at offset 0. */
  #probe (link: Link): void {
    const info = link.conn.info
    const length = info.size === 0n ? 0 : Math.min(info.blockSize?.minimum ?? 1, Number(info.size))
    link.probing = true
    const done = (): void => { link.probing = false }
    this.#options.runOn(link, { type: NBD_CMD.READ, flags: 0, offset: 0n, length, dest: Buffer.alloc(length) }).then(done, done)
  }
}
