/**
 * One NBD command on its way through the engine. It has two lives, which end separately:
 *
 *   caller's promise   answered once: the result, the error, or early (an abort, or a bound
 *                      that passed) — the caller may then reuse its buffers
 *   life on the wire   from the first send until the server can no longer run the command:
 *                      its reply arrived, or its connection is closed; `onSettled` then tells
 *                      whoever orders against it (range lock, FLUSH barrier) that it is over
 *
 * A request answered early is `abandoned`: it is never sent again, its late reply is read and
 * dropped, and its READ destination is given back before the caller hears of it.
 *
 * A request still on the wire of a connection that was given up (it stopped answering: see
 * Link, IN_DOUBT) is in doubt: its caller is answered (a WRITE once its payload left our
 * socket buffer: the caller's bytes are never read after its answer), and its life on the wire
 * goes on for as long as that connection is open, since the server may still run it. Whoever
 * orders against it hears of it (`inDoubt`) and stops waiting for it: such a wait would have
 * no bound.
 */
import type { NbdCmd } from '../../protocol/constants.ts'
import type { PayloadSink } from '../../transport/socket-reader.ts'
import { flushStateChanges } from './lifecycle.ts'
import type { Link } from './link.ts'
import type { CommandResult, Reply, ReplyTarget } from './reply.ts'

/** Gives back an admission slot (Admission). */
export interface SlotHolder {
  release: () => void
}

/**
 * Who hears that a request's reply was read whole (`error` null: see req.reply) or that its
 * link failed under it. The engine's, one per engine: a request carries it, not a closure.
 */
export type ReplyListener = (req: Request, link: Link, error: Error | null) => void

export interface Command {
  readonly type: NbdCmd
  readonly flags: number
  readonly offset: bigint
  readonly length: number
  /** WRITE: exactly `length` bytes, sent as they are (never copied). */
  readonly payload?: Uint8Array
  /** READ: exactly `length` bytes, filled straight from the socket. */
  readonly dest?: Buffer
}

/** How a request's life on the wire ended: `ok` when the server answered it with success. */
export type Settled = (ok: boolean) => void | Promise<void>

/** What the caller of submit() may hook into. */
export interface SubmitHooks {
  /**
   * Right before each send: undefined to go on, or a promise to wait for first (then the
   * request looks for a connection again and asks once more).
   */
  readonly beforeSend?: () => Promise<void> | undefined
  /**
   * The life on the wire is over. Called before a successful caller is answered, with the
   * caller's buffers still intact; the answer waits for a promise it returns.
   */
  readonly settled?: Settled
  /**
   * The request is in doubt (see above), its caller answered. Called at most once, before
   * `settled`, which still comes when the life on the wire ends.
   */
  readonly inDoubt?: () => void
  /**
   * A write-like command was acknowledged by the server (called as its reply is taken, while
   * its connection is known to be alive; not for a request answered early).
   */
  readonly acked?: () => void
  /** One send is on a connection's wire (true: registered there), or no longer (false). */
  readonly wire?: (on: boolean) => void
}

export class Request implements PayloadSink, ReplyTarget {
  readonly type: NbdCmd
  readonly flags: number
  readonly offset: bigint
  readonly length: number
  readonly payload: Uint8Array | undefined
  /** READ target; null once the caller gave up, and the reply's bytes are then dropped. */
  dest: Buffer | null
  /** Set while the socket may read straight into dest (see SocketReader). */
  revoke: (() => void) | null = null
  readonly #hooks: SubmitHooks | undefined

  #resolve: ((value: CommandResult) => void) | null = null
  #reject: ((err: unknown) => void) | null = null
  /** The caller has been answered (result, error, or early). */
  answered = false
  /** Answered early: never sent again; its reply, when it comes, is dropped. */
  abandoned = false
  /** Its life on the wire ended (the engine's last step ran: settled once, then answered). */
  ended = false
  /** The error to answer with once the payload is released (an early answer waits for that). */
  #early: Error | null = null
  signal: AbortSignal | undefined = undefined
  onAbort: (() => void) | undefined = undefined
  /** The admission the request holds a slot of, until releaseSlot(). */
  slots: SlotHolder | null = null
  /** Told when the reply is read whole, or the link failed under it (see Receiver). */
  replied: ReplyListener | null = null

  /** The link the request was last sent on; null before the first send. */
  link: Link | null = null
  /** Wire cookie while in flight, 0 otherwise. */
  cookie = 0
  /** Index in the link's cookie table while in flight, -1 otherwise. */
  slot = -1
  /** When it went out (performance.now()), for the liveness check and `show requests`. */
  sentAt = 0
  /** How many times it was sent again after a lost connection. */
  attempts = 0
  /** When it first could not be served (performance.now()); -1: never. Bounds every retry. */
  firstFailureAt = -1
  /** Sent, and waiting for its reply in receiveReplies (QEMU's `receiving`). */
  receiving = false
  /** The reply being read, one per attempt. */
  reply: Reply | null = null
  /** Writes of the payload still queued in a socket (the caller's buffer is still in use). */
  #queuedPayloads = 0
  #releasePayload: (() => void) | null = null

  constructor (command: Command, hooks?: SubmitHooks) {
    this.type = command.type
    this.flags = command.flags
    this.offset = command.offset
    this.length = command.length
    this.payload = command.payload
    this.dest = command.dest ?? null
    this.#hooks = hooks
  }

  /** Registered on a link's wire, until that link lets go of it. */
  #onWire = false

  /** The server acknowledged this write-like command (see SubmitHooks.acked). */
  acked (): void {
    if (!this.abandoned) this.#hooks?.acked?.()
  }

  /** Its link registered it (true) or let go of it (false); see SubmitHooks.wire. */
  wire (on: boolean): void {
    if (this.#onWire === on) return
    this.#onWire = on
    this.#hooks?.wire?.(on)
  }

  /** The beforeSend hook's answer (undefined: send now). */
  beforeSend (): Promise<void> | undefined {
    return this.#hooks?.beforeSend?.()
  }

  /** Gives the request the caller's promise to settle. */
  bind (resolve: (value: CommandResult) => void, reject: (err: unknown) => void): void {
    this.#resolve = resolve
    this.#reject = reject
  }

  answer (value: CommandResult): void {
    if (this.answered) return
    this.answered = true
    this.#resolve?.(value)
  }

  fail (err: unknown): void {
    if (this.answered) return
    this.answered = true
    // The state change that came with the failure is announced before the caller hears of it.
    queueMicrotask(flushStateChanges)
    this.#reject?.(err)
  }

  /**
   * Answers the caller now with `err`, although the command may still run on the server:
   * the READ destination is taken back at once, and a WRITE's caller hears only once the
   * socket has let go of its payload.
   */
  answerEarly (err: Error): void {
    if (this.answered || this.#early !== null) return
    this.abandoned = true
    this.revoke?.()
    this.dest = null
    if (this.#queuedPayloads > 0) this.#early = err
    else this.fail(err)
  }

  /** Its connection was given up with it on the wire: the caller is told `err`; see above. */
  doubt (err: Error): void {
    // A payload still queued in the socket holds the answer back even now (answerEarly): the
    // caller's buffer is still being sent, and one it reused would land in this range (a FUSE
    // slot would carry the next request's bytes). It is answered once the server takes the
    // payload or the socket is destroyed (close()).
    this.answerEarly(err)
    this.releaseSlot()
    this.#hooks?.inDoubt?.()
  }

  /** Gives back the request's admission slot (idempotent). */
  releaseSlot (): void {
    const slots = this.slots
    if (slots === null) return
    this.slots = null
    slots.release()
  }

  /** The life on the wire is over (called once, after the last attempt). */
  settle (ok: boolean): void | Promise<void> {
    return this.#hooks?.settled?.(ok)
  }

  /**
   * The payload is about to be queued in a socket: returns the write callback that tells us
   * the socket let go of it (made once, and only for requests with a payload).
   */
  queuePayload (): () => void {
    this.#queuedPayloads++
    this.#releasePayload ??= () => { this.#payloadReleased() }
    return this.#releasePayload
  }

  get payloadQueued (): boolean {
    return this.#queuedPayloads > 0
  }

  /** A socket let go of one queued copy of the payload (flushed, or the socket died). */
  #payloadReleased (): void {
    if (--this.#queuedPayloads > 0) return
    const early = this.#early
    if (early !== null) {
      this.#early = null
      this.fail(early)
    }
  }
}
