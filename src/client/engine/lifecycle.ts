/**
 * The engine's states (QEMU's NBDClientState), every transition it may make, and the outage:
 * the requests waiting for a lost server to come back.
 *
 *                      active connection lost, delay > 0          outage deadline passes,
 *      CONNECTED ───────────────────────────────────────► CONNECTING_WAIT ── or cancelInFlight() ──┐
 *        ▲   │         active connection lost, delay = 0         ▲   │                             ▼
 *        │   └───────────────────────────────────────────────────┼───┼──────────────────► CONNECTING_NOWAIT
 *        │                                   reconnect() asked ──┘   │                             │
 *        │ a connection is ready (handshake, same export, replay done) from either CONNECTING ◄───┘
 *        └────────────────────────────────────────────────────────────────────────────────────────
 *      any ──► QUIT  on a protocol violation, a changed server, close() or destroy()
 *
 * setState refuses any other transition (an internal error: the engine's bookkeeping is
 * wrong). Listeners hear of a change on the next tick, once the engine is consistent again,
 * so a listener that throws (an uncaught exception, as with any event listener) can never
 * leave the engine half-way through a transition — or earlier, at flushStateChanges(): before
 * a failed request's caller is answered and before close() resolves, so a caller never hears
 * of a failure before the state change that came with it.
 *
 * The outage starts when the active connection is lost and ends when the next is ready. Its
 * deadline (start + reconnectDelay) bounds every request that waits in it; a request that
 * failed before (a flapping server) keeps the deadline of its first failure, so retries never
 * extend a request's wait.
 */
import diagnostics from 'node:diagnostics_channel'
import { performance } from 'node:perf_hooks'
import { ReconnectDelayError } from '../../errors.ts'
import { WaitQueue } from '../wait-queue.ts'
import type { Request } from './request.ts'

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

const TRANSITIONS: Readonly<Record<NbdClientState, readonly NbdClientState[]>> = {
  CONNECTING_WAIT: ['CONNECTED', 'CONNECTING_NOWAIT', 'QUIT'],
  CONNECTED: ['CONNECTING_WAIT', 'CONNECTING_NOWAIT', 'QUIT'],
  CONNECTING_NOWAIT: ['CONNECTED', 'CONNECTING_WAIT', 'QUIT'],
  QUIT: []
}

/** Changes not yet announced, in the order they happened (over every engine). */
const pending: Array<{ lifecycle: Lifecycle, change: StateChange }> = []
let scheduled = false

/** Announces every change not yet announced, now (from a point where the engines are consistent). */
export function flushStateChanges (): void {
  scheduled = false
  for (let next = pending.shift(); next !== undefined; next = pending.shift()) Lifecycle.announce(next.lifecycle, next.change)
}

export class Lifecycle {
  #state: NbdClientState = 'CONNECTING_WAIT'
  readonly #label: string | undefined
  readonly #deliver: (change: StateChange) => void

  constructor (label: string | undefined, deliver: (change: StateChange) => void) {
    this.#label = label
    this.#deliver = deliver
  }

  get state (): NbdClientState {
    return this.#state
  }

  /**
   * The one place the state changes. Returns false when it is already `to`. `announce`: tell
   * listeners (the first connect is not announced: nobody could be listening yet).
   */
  set (to: NbdClientState, reason: string, announce = true): boolean {
    const from = this.#state
    if (from === to) return false
    if (!TRANSITIONS[from].includes(to)) throw new Error(`internal: no transition from ${from} to ${to} (${reason})`)
    this.#state = to
    if (announce) {
      pending.push({ lifecycle: this, change: { from, to, reason } })
      if (!scheduled) {
        scheduled = true
        process.nextTick(flushStateChanges)
      }
    }
    return true
  }

  static announce (this: void, lifecycle: Lifecycle, change: StateChange): void {
    try {
      if (stateChannel.hasSubscribers) stateChannel.publish({ label: lifecycle.#label, ...change })
      lifecycle.#deliver(change)
    } catch (err) {
      // A listener's bug is the listener's: reported as an uncaught exception from a microtask
      // of its own, so nothing else queued in this tick (the engine's own work) is held up.
      queueMicrotask(() => { throw err })
    }
  }
}

/** Requests waiting for a connection, each bounded by its own deadline. */
export class Outage {
  /** When it started (performance.now()); -1 when there is none. */
  since = -1
  /** Start + reconnect delay: no request waits past it. */
  deadline = Infinity
  #open = false
  #timer: NodeJS.Timeout | null = null
  readonly #queue: WaitQueue<Request>
  #expiredError: () => ReconnectDelayError

  constructor () {
    this.#expiredError = () => new ReconnectDelayError('the server did not come back within the reconnect delay')
    this.#queue = new WaitQueue<Request>({
      grantable: () => this.#open,
      granted: () => {},
      expired: () => this.#expiredError()
    })
  }

  get waiting (): number {
    return this.#queue.length
  }

  /**
   * A new outage of `delay` ms. `onDeadline` runs when it passes (the engine goes
   * CONNECTING_NOWAIT); `error` is what expired waiters get.
   */
  begin (delay: number, onDeadline: () => void, error: () => ReconnectDelayError): void {
    this.#clearTimer()
    this.#open = false
    this.since = performance.now()
    this.deadline = this.since + delay
    this.#expiredError = error
    this.#timer = setTimeout(onDeadline, delay)
    // Waiters hold the process; an outage nobody waits in must not.
    this.#timer.unref()
  }

  /**
   * Waits for the next connection, until the request's own deadline at the latest. One that
   * first failed in this outage has the outage's deadline, which the outage's own timer keeps
   * (the state turns NOWAIT, then its waiters fail); only one that failed before, in an earlier
   * outage, needs a timer of its own.
   */
  wait (req: Request): Promise<void> {
    if (req.firstFailureAt < 0 || req.firstFailureAt >= this.since) {
      if (req.firstFailureAt < 0) req.firstFailureAt = this.since
      return this.#queue.wait(req, req.signal)
    }
    return this.#queue.wait(req, req.signal, req.firstFailureAt + (this.deadline - this.since))
  }

  /** A connection is ready: every waiter goes. */
  end (): void {
    this.#clearTimer()
    this.since = -1
    this.deadline = Infinity
    this.#open = true
    this.#queue.pump()
    this.#open = false
  }

  /** Every waiter fails with `err` (the deadline passed, cancelInFlight(), QUIT). */
  fail (err: Error): void {
    this.#clearTimer()
    this.#queue.rejectAll(err)
  }

  stop (): void {
    this.#clearTimer()
  }

  #clearTimer (): void {
    if (this.#timer !== null) clearTimeout(this.#timer)
    this.#timer = null
  }
}
