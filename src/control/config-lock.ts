/**
 * The daemon's config lock: commands that change state hold it while they run. It is an
 * async-mutex Mutex; control clients do not queue inside async-mutex (a timed-out acquire
 * would stay queued as a "ghost" and a client that hung up could not be taken out), they wait
 * in our own FIFO and take the lock with a same-tick try (multipathd's trylock plus eventfd
 * wake-up, as uxlsnr.md §6.4 maps it):
 *
 *   request(w) ── free and nobody ahead ──► held by w at once
 *        └────── otherwise ─► waiting[] ── lock released (waitForUnlock) ──► next try, in order
 *   cancel(w)  removes w from waiting[] (deadline, hang-up): nothing is left behind
 */
import { Mutex } from 'async-mutex'

export interface LockWaiter {
  /** Called when the waiter now holds the lock. */
  readonly grant: () => void
}

export class ConfigLock {
  /** Background work (reconfigure) uses mutex.runExclusive directly. */
  readonly mutex = new Mutex()
  readonly #waiting: LockWaiter[] = []
  #armed = false

  get waiting (): number {
    return this.#waiting.length
  }

  /** Takes the lock now and returns true, or queues `waiter` and returns false. */
  request (waiter: LockWaiter): boolean {
    if (this.#waiting.length === 0 && this.#tryTake()) return true
    this.#waiting.push(waiter)
    this.#arm()
    return false
  }

  cancel (waiter: LockWaiter): void {
    const i = this.#waiting.indexOf(waiter)
    if (i >= 0) this.#waiting.splice(i, 1)
  }

  /** Releases a lock taken through request(). */
  release (): void {
    this.mutex.release()
    this.#pump()
  }

  /** acquire() on a free Mutex takes it synchronously: a real trylock that never queues. */
  #tryTake (): boolean {
    if (this.mutex.isLocked()) return false
    void this.mutex.acquire()
    return true
  }

  #pump (): void {
    if (this.#waiting.length > 0 && this.#tryTake()) this.#waiting.shift()!.grant()
    if (this.#waiting.length > 0) this.#arm()
  }

  /** One wake-up for all waiters, re-armed while anyone waits (no lost wake-ups). */
  #arm (): void {
    if (this.#armed) return
    this.#armed = true
    void this.mutex.waitForUnlock().then(() => {
      this.#armed = false
      this.#pump()
    })
  }
}
