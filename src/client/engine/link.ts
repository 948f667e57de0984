/**
 * One connection of an engine, from the handshake until its socket is closed, with its own
 * send side, read side and cookie table, so that an old connection can finish (or give up)
 * what is on its wire while a new one already carries new requests.
 *
 *   RECOVERING ──acknowledged writes replayed──► ACTIVE ──lost (no answer, ESHUTDOWN,
 *        │                                          │       reconnect(), disconnect())──► DRAINING
 *        │                                          │                                        │
 *        └──────────────── error ───────────────────┴───── error, EOF ──────────────────────┴──► CLOSED
 *
 *   ACTIVE      takes new requests (the first connection starts here: nothing to replay)
 *   DRAINING    takes nothing new; NBD_CMD_DISC has been sent, so the server finishes what it
 *               has and closes; we keep reading, because a command the server may still run is
 *               still on the wire, and whatever orders against it waits for its reply or for
 *               this close. Bounded: past its deadline the socket is destroyed.
 *   CLOSED      the socket is gone; nothing sent on it can run any more (for a destroyed
 *               socket: as far as we can ever know)
 */
import { performance } from 'node:perf_hooks'
import { ConnectionError, NbdError } from '../../errors.ts'
import type { Connection } from '../../connector/connection.ts'
import { Receiver } from './receiver.ts'
import type { ChunkCounters } from './reply.ts'
import type { Request } from './request.ts'
import { Sender } from './sender.ts'
import { CookieTable } from './slots.ts'

export type LinkState = 'RECOVERING' | 'ACTIVE' | 'DRAINING' | 'CLOSED'

export interface LinkHooks {
  /** Where reply chunks are counted (the engine's statistics). */
  readonly counters?: ChunkCounters
  /** The link's first error: a transport failure, or the server broke the protocol. */
  readonly failed: (link: Link, error: NbdError) => void
  /** The socket is closed. */
  readonly closed: (link: Link) => void
}

let nextId = 1

export class Link {
  readonly id = nextId++
  readonly conn: Connection
  state: LinkState
  readonly table = new CookieTable()
  readonly sender: Sender
  readonly receiver: Receiver
  /** The first error; everything that touches the link afterwards gets it. */
  error: NbdError | null = null
  readonly openedAt = performance.now()
  /** A request completed here: the connection proved itself, back-off may start over. */
  healthy = false
  /** When the engine stopped sending here (performance.now()); -1 while ACTIVE. */
  lostAt = -1
  /** A liveness probe is on the wire. */
  probing = false
  /** When bytes last moved either way (liveness). */
  lastProgressAt = performance.now()
  #progress = 0
  #drainTimer: NodeJS.Timeout | null = null
  #answerTimer: NodeJS.Timeout | null = null
  readonly #hooks: LinkHooks

  constructor (conn: Connection, state: LinkState, hooks: LinkHooks) {
    this.conn = conn
    this.state = state
    this.#hooks = hooks
    this.sender = new Sender(this)
    this.receiver = new Receiver(this)
    const socket = conn.socket
    // Keep reading even when idle, so that a server that goes away is noticed at once and
    // not by the next request.
    conn.reader.expect(true)
    socket.once('end', () => {
      // A last reply may precede the EOF: requests in flight read on and fail at the end.
      if (this.table.count === 0) this.fail(new ConnectionError('server closed the connection'))
    })
    socket.once('close', () => {
      if (this.table.count === 0) this.fail(new ConnectionError('connection closed'))
      this.#setClosed()
    })
  }

  get counters (): ChunkCounters | undefined {
    return this.#hooks.counters
  }

  get inFlight (): number {
    return this.table.count
  }

  get tls (): boolean {
    return this.conn.info.tls
  }

  /** Throws unless new requests may go out here. */
  checkSendable (): void {
    if (this.error !== null) throw new ConnectionError('the connection was lost before the request could be sent', { cause: this.error })
    if (this.state !== 'ACTIVE' && this.state !== 'RECOVERING') {
      throw new ConnectionError('the connection is being closed; the request goes to the next one')
    }
  }

  /** The request is done with this link (its reply read, or it failed here). */
  release (req: Request): void {
    this.receiver.leave(req)
    this.table.unregister(req)
  }

  /**
   * Records the link's first error and kills the connection (QEMU nbd_channel_error): the
   * reader fails every read, the socket is destroyed. Returns the error every request on the
   * link reports.
   */
  fail (err: unknown): NbdError {
    if (this.error !== null) return this.error
    const error = toNbdError(err)
    this.error = error
    this.conn.reader.fail(error)
    this.conn.socket.destroy()
    this.#clearDrainTimer()
    this.#hooks.failed(this, error)
    return error
  }

  /**
   * Stops sending here: NBD_CMD_DISC, then read on until the server closes, for at most `ms`
   * (then the socket is destroyed, failing what is still on it with `onTimeout()`). With
   * `answer`, the callers of what is still on the wire after `answer.ms` are answered with
   * `answer.error()` (their bound passed), while the requests themselves stay until the end.
   */
  drain (ms: number, onTimeout: () => NbdError, answer?: { readonly ms: number, readonly error: () => Error }): void {
    if (this.state === 'DRAINING' || this.state === 'CLOSED') return
    this.state = 'DRAINING'
    if (this.lostAt < 0) this.lostAt = performance.now()
    if (this.error !== null) return
    this.sender.disconnect()
    this.#drainTimer = setTimeout(() => { this.fail(onTimeout()) }, ms)
    this.#drainTimer.unref()
    if (answer !== undefined) {
      this.#answerTimer = setTimeout(() => {
        this.#answerTimer = null
        for (const req of this.table.requests()) req.answerEarly(answer.error())
      }, answer.ms)
      this.#answerTimer.unref()
    }
  }

  /** Did bytes move since the last look? Updates lastProgressAt when they did. */
  progressed (now: number): boolean {
    const socket = this.conn.socket as { bytesWritten?: number }
    const progress = this.conn.reader.bytesRead + (typeof socket.bytesWritten === 'number' ? socket.bytesWritten : 0)
    if (progress === this.#progress) return false
    this.#progress = progress
    this.lastProgressAt = now
    return true
  }

  #setClosed (): void {
    this.#clearDrainTimer()
    if (this.state === 'CLOSED') return
    this.state = 'CLOSED'
    this.#hooks.closed(this)
  }

  #clearDrainTimer (): void {
    if (this.#drainTimer !== null) clearTimeout(this.#drainTimer)
    if (this.#answerTimer !== null) clearTimeout(this.#answerTimer)
    this.#drainTimer = null
    this.#answerTimer = null
  }
}

export function toNbdError (err: unknown): NbdError {
  if (err instanceof NbdError) return err
  const code = (err as NodeJS.ErrnoException | undefined)?.code
  return new ConnectionError(`connection failed${code === undefined ? '' : ` (${code})`}`, { cause: err })
}
