/**
 * Busy polling: a short spin before the event loop sleeps, while an answer is due soon (a
 * reply to a request just sent, the next FUSE request after a reply). Waking a sleeping thread
 * costs a cross-CPU interrupt and, on a virtual machine whose idle vCPUs halt at once, an exit
 * to the hypervisor on both sides: on these machines most of a QD 1 request's time (perf: 53%
 * of the FUSE daemon's cycles in _raw_spin_unlock_irqrestore and finish_task_switch). A thread
 * that is still running when the bytes arrive needs no wake-up.
 *
 *   I/O callback sends or answers ──► arm() ──► setImmediate ──► spin: our epoll set
 *   (every NBD socket, /dev/fuse) polled without blocking, sched_yield between looks, until
 *   one is readable or the budget is spent ──► the loop's own epoll finds it at once
 *
 * The spin happens only while work flows (an idle daemon never arms), gives its CPU to anything
 * runnable there (sched_yield), and backs off: after MISS_STREAK spins in a row that found
 * nothing, it rests for QUIET_MS, so a sparse load wastes at most a few percent of a CPU.
 * Off unless enabled (a library should not spin in its user's process; `nbdts mount` does).
 */
import { ReadySet, schedYield } from '../util/libc.ts'

const MISS_STREAK = 8
const QUIET_MS = 10

export class BusyPoll {
  #budgetMs = 0
  #set: ReadySet | null = null
  readonly #fds = new Set<number>()
  #armed = false
  #misses = 0
  #quietUntil = 0
  /** Spins run, spins that saw a descriptor become readable, and times it rested. */
  spins = 0
  hits = 0
  rests = 0
  readonly #run = (): void => { this.#spin() }

  get budgetUs (): number {
    return this.#budgetMs * 1000
  }

  /**
   * Spins up to `budgetUs` microseconds from now on (the highest budget asked for wins: mounts
   * of one daemon share the spinner). False when this machine cannot (no koffi): it stays off.
   */
  enable (budgetUs: number): boolean {
    if (budgetUs <= 0) return true
    if (this.#set === null) {
      try {
        this.#set = new ReadySet()
      } catch {
        return false
      }
      for (const fd of this.#fds) this.#set.add(fd)
    }
    this.#budgetMs = Math.max(this.#budgetMs, budgetUs / 1000)
    return true
  }

  /** Stops spinning (tests). */
  disable (): void {
    this.#budgetMs = 0
  }

  /** A descriptor whose readability ends a spin (kept while it is open). */
  watch (fd: number): void {
    this.#fds.add(fd)
    this.#set?.add(fd)
  }

  unwatch (fd: number): void {
    if (this.#fds.delete(fd)) this.#set?.remove(fd)
  }

  /** Something was sent or answered: spin before the loop sleeps (once per loop turn). */
  arm (): void {
    if (this.#budgetMs === 0 || this.#armed) return
    this.#armed = true
    setImmediate(this.#run)
  }

  #spin (): void {
    this.#armed = false
    const set = this.#set
    if (set === null || this.#budgetMs === 0) return
    const start = performance.now()
    if (start < this.#quietUntil) return
    this.spins++
    const end = start + this.#budgetMs
    for (;;) {
      if (set.ready()) {
        this.hits++
        this.#misses = 0
        return
      }
      if (performance.now() >= end) break
      schedYield()
    }
    if (++this.#misses >= MISS_STREAK) {
      this.#misses = 0
      this.rests++
      this.#quietUntil = performance.now() + QUIET_MS
    }
  }
}

/** The process's one spinner: every socket the default opener makes is watched by it. */
export const busyPoll = new BusyPoll()
