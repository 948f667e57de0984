/**
 * The background connector (QEMU's nbd/client-connection.c, with its thread turned into an
 * async loop): connect + handshake, again and again with back-off, until one attempt
 * succeeds, then hand the connection to whoever asked. Requests never open sockets; they only
 * wait for the engine to be CONNECTED again.
 *
 *   idle ──kick()──► attempt ──ok──► onConnected(conn) ──► idle ──connectionLost(healthy)──┐
 *          ▲           │ fail                                                            │
 *          │           ▼                                                                 │
 *          └──── sleep(back-off) ◄── a connection that died before it proved itself ◄────┘
 *                 woken early by: kick(true), hurry() (requests started waiting: the
 *                 sleep is cut to the dense delay), the Unix socket file reappearing
 *
 * A connection that dies before it proved itself (no request completed on it, and it lived
 * less than the first back-off step) counts as a failed attempt: a server that accepts the
 * handshake and then drops every connection gets back-off, not a storm of reconnects.
 */
import { watch, type FSWatcher } from 'node:fs'
import path from 'node:path'
import { ClosedError } from '../errors.ts'
import { backoffDelay, type BackoffOptions } from './backoff.ts'
import type { Connection, Establish } from './connection.ts'

export interface ConnectorOptions {
  readonly establish: Establish
  readonly backoff?: BackoffOptions
  /** Called with each new connection; the connector is idle again afterwards. */
  readonly onConnected: (connection: Connection) => void
  /** Called after each failed attempt, before sleeping; `retrying` is false when it gives up. */
  readonly onAttemptFailed?: (error: Error, attempt: number, retrying: boolean, delayMs: number) => void
  /** Requests wait for the server: keep attempts dense. */
  readonly waiting?: () => boolean
  /** A Unix socket path: when its file (re)appears, try at once. */
  readonly watchPath?: string
}

export class Connector {
  readonly #options: ConnectorOptions
  #running = false
  #stopped = false
  /** Retry after a failure? Off for a first connect without an open timeout (one attempt). */
  retry = true
  #failures = 0
  #attemptAbort: AbortController | null = null
  #sleepTimer: NodeJS.Timeout | null = null
  #sleepUntil = 0
  #sleepWake: (() => void) | null = null
  #watcher: FSWatcher | null = null
  /** The socket file just (re)appeared: the server may need a moment to listen on it. */
  #justAppeared = false
  #lastError: Error | null = null
  attempts = 0

  constructor (options: ConnectorOptions) {
    this.#options = options
  }

  /** The error of the last failed attempt: what a caller who gives up should report. */
  get lastError (): Error | null {
    return this.#lastError
  }

  get running (): boolean {
    return this.#running
  }

  /** Starts trying, unless already trying. `now` cuts a back-off sleep short. */
  kick (now = false): void {
    if (this.#stopped) return
    if (this.#running) {
      if (now) this.#wakeUp()
      return
    }
    this.#running = true
    void this.#loop(false)
  }

  /**
   * The connection handed out last is gone. `healthy`: it proved itself, so try again at once;
   * otherwise it counts as a failed attempt and the next one waits its back-off.
   */
  connectionLost (healthy: boolean): void {
    if (this.#stopped || this.#running) return
    if (healthy) this.#failures = 0
    else this.#failures++
    this.#running = true
    void this.#loop(!healthy)
  }

  /** Requests started waiting: a long back-off sleep is cut to the dense delay. */
  hurry (): void {
    if (this.#sleepTimer === null) return
    const dense = backoffDelay(this.#failures, this.#backoff(), true)
    if (this.#sleepUntil - performance.now() > dense) this.#arm(dense)
  }

  /** Stops for good: the attempt in progress is aborted and no timer is left behind. */
  stop (): void {
    this.#stopped = true
    this.#attemptAbort?.abort(new ClosedError('client closed'))
    this.#wakeUp()
    this.#unwatch()
  }

  #wakeUp (): void {
    if (this.#sleepTimer !== null) clearTimeout(this.#sleepTimer)
    this.#sleepTimer = null
    const wake = this.#sleepWake
    this.#sleepWake = null
    wake?.()
  }

  #arm (ms: number): void {
    if (this.#sleepTimer !== null) clearTimeout(this.#sleepTimer)
    this.#sleepUntil = performance.now() + ms
    this.#sleepTimer = setTimeout(() => { this.#wakeUp() }, ms)
  }

  #sleep (ms: number): Promise<void> {
    this.#watch()
    return new Promise<void>((resolve) => {
      this.#sleepWake = resolve
      this.#arm(ms)
    })
  }

  async #loop (sleepFirst: boolean): Promise<void> {
    if (sleepFirst) await this.#sleep(this.#delay())
    while (!this.#stopped) {
      this.attempts++
      const abort = new AbortController()
      this.#attemptAbort = abort
      let connection: Connection
      try {
        connection = await this.#options.establish(abort.signal)
      } catch (err) {
        this.#attemptAbort = null
        if (this.#stopped) break
        this.#failures++
        this.#lastError = err instanceof Error ? err : new Error(String(err))
        const delay = this.#delay()
        this.#options.onAttemptFailed?.(this.#lastError, this.#failures, this.retry, delay)
        if (!this.retry) break
        await this.#sleep(delay)
        continue
      }
      this.#attemptAbort = null
      if (this.#stopped) {
        connection.socket.destroy()
        break
      }
      this.#running = false
      this.#unwatch()
      this.#options.onConnected(connection)
      return
    }
    this.#running = false
    this.#unwatch()
  }

  #delay (): number {
    if (this.#justAppeared) {
      // A socket file bound but not yet listened on refuses us: look again very soon.
      this.#justAppeared = false
      return 10
    }
    return backoffDelay(Math.max(1, this.#failures), this.#backoff(), this.#options.waiting?.() === true)
  }

  /** The back-off options, with the dense delay defaulting by transport (see BackoffOptions). */
  #backoff (): BackoffOptions {
    const backoff = this.#options.backoff
    return { ...backoff, waitingMs: backoff?.waitingMs ?? (this.#options.watchPath !== undefined ? 50 : 200) }
  }

  /** While sleeping between attempts, a Unix socket file that (re)appears wakes us. */
  #watch (): void {
    const target = this.#options.watchPath
    if (target === undefined || this.#watcher !== null) return
    const base = path.basename(target)
    try {
      this.#watcher = watch(path.dirname(target), { persistent: false }, (_event, name) => {
        if (name !== null && name !== base) return
        this.#justAppeared = true
        this.#wakeUp()
      })
      this.#watcher.on('error', () => { this.#unwatch() })
    } catch {
      // No such directory (yet): the back-off timer alone decides.
      this.#watcher = null
    }
  }

  #unwatch (): void {
    this.#watcher?.close()
    this.#watcher = null
  }
}
