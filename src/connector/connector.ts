/**
 * The background connector (QEMU's nbd/client-connection.c, with its thread turned into an
 * async loop): connect + handshake, again and again with back-off, until one attempt
 * succeeds, then hand the connection to whoever asked. Requests never open sockets; they
 * only wait for the engine to be CONNECTED again.
 *
 *   idle ──kick()──► attempt ──ok──► onConnected(conn) ──► idle
 *                      │ fail (retry)     ▲
 *                      ▼                  │
 *                    sleep(backoff) ──────┘   (stop() ends attempt and sleep at once)
 */
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
}

export class Connector {
  readonly #options: ConnectorOptions
  #running = false
  #stopped = false
  /** Retry after a failure? Off for a first connect without an open timeout (one attempt). */
  retry = true
  #attemptAbort: AbortController | null = null
  #sleepTimer: NodeJS.Timeout | null = null
  #sleepWake: (() => void) | null = null
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
    void this.#loop()
  }

  /** Stops for good: the attempt in progress is aborted and no timer is left behind. */
  stop (): void {
    this.#stopped = true
    this.#attemptAbort?.abort(new ClosedError('client closed'))
    this.#wakeUp()
  }

  #wakeUp (): void {
    if (this.#sleepTimer !== null) clearTimeout(this.#sleepTimer)
    this.#sleepTimer = null
    const wake = this.#sleepWake
    this.#sleepWake = null
    wake?.()
  }

  async #loop (): Promise<void> {
    let failures = 0
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
        failures++
        this.#lastError = err instanceof Error ? err : new Error(String(err))
        const delay = backoffDelay(failures, this.#options.backoff)
        this.#options.onAttemptFailed?.(this.#lastError, failures, this.retry, delay)
        if (!this.retry) break
        await new Promise<void>((resolve) => {
          this.#sleepWake = resolve
          this.#sleepTimer = setTimeout(() => { this.#wakeUp() }, delay)
        })
        continue
      }
      this.#attemptAbort = null
      if (this.#stopped) {
        connection.socket.destroy()
        break
      }
      this.#running = false
      this.#options.onConnected(connection)
      return
    }
    this.#running = false
  }
}
