/**
 * One connection of an engine, from the handshake until its socket is closed, with its own
 * send side, read side and cookie table, so that an old connection can finish (or give up)
 * what is on its wire while a new one already carries new requests. Its states, and every
 * edge between them, are LINK_TRANSITIONS below; `to()` is the one place the state changes.
 *
 *   VETTING ──identity checked──► ACTIVE ──given up (no answer, ESHUTDOWN, reconnect(),
 *     │                             │      a path switch, disconnect())──► DRAINING
 *     │                             │                                       │   │   │
 *     │                             │                   idle, acknowledged  │   │   │ deadline with a
 *     │                             │                   writes: own FLUSH ◄─┘   │   │ write on the wire
 *     │                             │                        FLUSHING           │   ▼
 *     │                             │                           │        idle   │  IN_DOUBT ── idle ─┐
 *     │                             │                           └──► DISCONNECTING ◄──────────────────┘
 *     │                             │                                  (DISC sent)
 *     └──────── error ──────────────┴──────── error, EOF, the server's close ─────────────► CLOSED
 *
 *   VETTING     multipath's identity bytes are read before it takes requests (the only
 *               requests it sends)
 *   ACTIVE      takes new requests (behind the write ledger's gate: see Ordering)
 *   DRAINING    takes nothing new; we keep reading until every request on the wire has its
 *               reply, and only then send NBD_CMD_DISC (the spec's order: a server may close
 *               at DISC while it still runs a command, as qemu-nbd does). Whatever orders
 *               against a request here waits for its reply or the server's close. Bounded: at
 *               the deadline, with no write-like request left unanswered, the socket is
 *               destroyed; with one, IN_DOUBT.
 *   FLUSHING    idle, with writes acknowledged here since its last FLUSH: one FLUSH of its own
 *               before DISC, a courtesy to a write-back server that shares storage with other
 *               paths (the ledger does not rely on it: the replay does)
 *   IN_DOUBT    the server stopped answering with writes on the wire that it may still run:
 *               their callers are answered, and the socket is kept open and read, because only
 *               their replies or the server's own close can tell that they are over. Until
 *               then nothing that would order behind them waits (overlapping writes are
 *               refused: NBD_ERR_IN_DOUBT; a FLUSH and the replay no longer wait for them).
 *   DISCONNECTING  DISC sent; the server closes (within DISC_CLOSE_MS, or we do)
 *   CLOSED      the socket is gone; nothing sent on it can run any more
 */
import { performance } from 'node:perf_hooks'
import { ConnectionError, NbdError, socketError } from '../../errors.ts'
import { NBD_CMD } from '../../protocol/constants.ts'
import type { Connection } from '../../connector/connection.ts'
import type { ReplyMode } from '../../protocol/reply.ts'
import { Receiver } from './receiver.ts'
import type { ChunkCounters } from './reply.ts'
import type { Request } from './request.ts'
import { Sender } from './sender.ts'
import { CookieTable } from './slots.ts'

export type LinkState = 'VETTING' | 'ACTIVE' | 'DRAINING' | 'FLUSHING' | 'IN_DOUBT' | 'DISCONNECTING' | 'CLOSED'

const LINK_TRANSITIONS: Readonly<Record<LinkState, readonly LinkState[]>> = {
  VETTING: ['ACTIVE', 'DRAINING', 'CLOSED'],
  ACTIVE: ['DRAINING', 'CLOSED'],
  DRAINING: ['FLUSHING', 'DISCONNECTING', 'IN_DOUBT', 'CLOSED'],
  FLUSHING: ['DISCONNECTING', 'CLOSED'],
  IN_DOUBT: ['DISCONNECTING', 'CLOSED'],
  DISCONNECTING: ['CLOSED'],
  CLOSED: []
}

/** The states each operation may run in. */
const MAY: Readonly<Record<'send' | 'drain' | 'probe', readonly LinkState[]>> = {
  /** New requests go out (FLUSHING: its own FLUSH only). */
  send: ['VETTING', 'ACTIVE', 'FLUSHING'],
  drain: ['VETTING', 'ACTIVE'],
  /** Liveness watches it: requests on it wait for answers that may never come. */
  probe: ['VETTING', 'ACTIVE']
}

/** How long a server may take to close after NBD_CMD_DISC (nothing is on the wire then). */
const DISC_CLOSE_MS = 5000

/**
 * What the reader reads for a reply header while large READs are in flight: the header, and
 * for a chunk the OFFSET_DATA offset that precedes its data (see SocketReader.exactHeaders).
 */
const EXACT_HEADER: Readonly<Record<ReplyMode, number>> = { simple: 16, structured: 20 + 8, extended: 32 + 8 }

/** Commands that change the export: in doubt when their connection is given up under them. */
const WRITE_LIKE = new Set<number>([NBD_CMD.WRITE, NBD_CMD.WRITE_ZEROES, NBD_CMD.TRIM])

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
  #state: LinkState
  readonly table = new CookieTable((large) => { this.conn.reader.exactHeaders = large ? EXACT_HEADER[this.conn.info.mode] : 0 })
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
  /** A write-like command succeeded here since the last FLUSH did (and when the last did). */
  unflushed = false
  lastWriteAt = -1
  /** Run once the link is idle, before NBD_CMD_DISC: the drain's FLUSH. */
  #beforeDisc: (() => Promise<unknown>) | null = null
  /** When bytes last moved either way (liveness). */
  lastProgressAt = performance.now()
  #progress = 0
  /** bytesWritten at the last look, and how much of it was written while probing (left out). */
  #written = 0
  #unheard = 0
  #drainTimer: NodeJS.Timeout | null = null
  #answerTimer: NodeJS.Timeout | null = null
  #closeTimer: NodeJS.Timeout | null = null
  readonly #hooks: LinkHooks

  constructor (conn: Connection, state: LinkState, hooks: LinkHooks) {
    this.conn = conn
    this.#state = state
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

  /** A write-like command is on this link's wire. */
  get writesOnWire (): boolean {
    for (const req of this.table.requests()) if (WRITE_LIKE.has(req.type)) return true
    return false
  }

  get state (): LinkState {
    return this.#state
  }

  /** The one place the state changes; refuses an edge LINK_TRANSITIONS does not have. */
  to (next: LinkState): void {
    if (this.#state === next) return
    if (!LINK_TRANSITIONS[this.#state].includes(next)) throw new Error(`internal: no link transition from ${this.#state} to ${next}`)
    this.#state = next
  }

  /** Whether `op` may run in the link's state now. */
  may (op: keyof typeof MAY): boolean {
    return MAY[op].includes(this.#state) && this.error === null
  }

  /** Throws unless new requests may go out here. */
  checkSendable (): void {
    if (this.error !== null) throw new ConnectionError('the connection was lost before the request could be sent', { cause: this.error })
    if (!MAY.send.includes(this.#state)) {
      throw new ConnectionError('the connection is being closed; the request goes to the next one')
    }
  }

  /** The request is done with this link (its reply read, or it failed here). */
  release (req: Request): void {
    this.receiver.leave(req)
    this.table.unregister(req)
    req.wire(false)
    if ((this.#state === 'DRAINING' || this.#state === 'IN_DOUBT') && this.table.count === 0) this.#disconnect()
  }

  /**
   * Idle and closing: the drain's FLUSH if it has one, then NBD_CMD_DISC. The FLUSH is a
   * courtesy to a write-back server that other paths share storage with (its cache reaches
   * the disk before it is left); the write ledger relies on the replay, not on it.
   */
  #disconnect (): void {
    const before = this.#state === 'DRAINING' && this.error === null ? this.#beforeDisc : null
    if (before === null) {
      this.#sendDisc()
      return
    }
    this.to('FLUSHING')
    const then = (): void => { this.#sendDisc() }
    before().then(then, then)
  }

  /** DISC, and a bound on the server's close: idle, so destroying the socket loses nothing. */
  #sendDisc (): void {
    if (this.#state === 'CLOSED' || this.#state === 'DISCONNECTING') return
    this.to('DISCONNECTING')
    this.sender.disconnect()
    this.#closeTimer = setTimeout(() => { this.conn.socket.destroy() }, DISC_CLOSE_MS)
    this.#closeTimer.unref()
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
    this.receiver.failed()
    return error
  }

  /**
   * Stops sending here: read on until every request on the wire is answered, then
   * NBD_CMD_DISC; for at most `ms`, then IN_DOUBT or destroyed (see above), what is still on
   * it failing with `onTimeout()`. With `answer`, the callers of what is still on the wire
   * after `answer.ms` are answered with `answer.error()` (their bound passed), while the
   * requests themselves stay until the end. `flushFirst` runs once the link is idle, before
   * the DISC (see #disconnect).
   */
  drain (ms: number, onTimeout: () => NbdError, answer?: { readonly ms: number, readonly error: () => Error }, flushFirst?: () => Promise<unknown>): void {
    if (!MAY.drain.includes(this.#state)) return
    this.to('DRAINING')
    if (this.lostAt < 0) this.lostAt = performance.now()
    if (this.error !== null) return
    this.#beforeDisc = flushFirst ?? null
    if (this.table.count === 0) this.#disconnect()
    this.#drainTimer = setTimeout(() => { this.#deadline(onTimeout()) }, ms)
    this.#drainTimer.unref()
    if (answer !== undefined) {
      this.#answerTimer = setTimeout(() => {
        this.#answerTimer = null
        for (const req of this.table.requests()) req.answerEarly(answer.error())
      }, answer.ms)
      this.#answerTimer.unref()
    }
  }

  /** The drain's bound passed with requests unanswered. */
  #deadline (error: NbdError): void {
    this.#drainTimer = null
    const requests = [...this.table.requests()]
    if (!requests.some((req) => WRITE_LIKE.has(req.type))) {
      this.fail(error)
      return
    }
    this.to('IN_DOUBT')
    if (this.#answerTimer !== null) clearTimeout(this.#answerTimer)
    this.#answerTimer = null
    // Everything here is answered now; whatever orders against it is told (see Request).
    for (const req of requests) req.doubt(error)
    // Over TCP, a peer that vanished (a partition) is noticed in the end, and the link closes.
    const socket = this.conn.socket as { setKeepAlive?: (on: boolean, ms: number) => void }
    socket.setKeepAlive?.(true, 10_000)
  }

  /**
   * Did bytes move since the last look? Updates lastProgressAt when they did. While a probe is
   * out, bytes we write are not the server moving (the probe's own request would restart the
   * quiet clock, and a hung server would be declared dead only after 1.5 timeouts): only
   * bytes read count then.
   */
  progressed (now: number): boolean {
    const socket = this.conn.socket as { bytesWritten?: number }
    const written = typeof socket.bytesWritten === 'number' ? socket.bytesWritten : 0
    if (this.probing) this.#unheard += written - this.#written
    this.#written = written
    const progress = this.conn.reader.bytesRead + written - this.#unheard
    if (progress === this.#progress) return false
    this.#progress = progress
    this.lastProgressAt = now
    return true
  }

  #setClosed (): void {
    this.#clearDrainTimer()
    if (this.#state === 'CLOSED') return
    this.to('CLOSED')
    this.#hooks.closed(this)
  }

  #clearDrainTimer (): void {
    if (this.#drainTimer !== null) clearTimeout(this.#drainTimer)
    if (this.#answerTimer !== null) clearTimeout(this.#answerTimer)
    if (this.#closeTimer !== null) clearTimeout(this.#closeTimer)
    this.#drainTimer = null
    this.#answerTimer = null
    this.#closeTimer = null
  }
}

export function toNbdError (err: unknown): NbdError {
  if (err instanceof NbdError) return err
  return socketError(err)
}
