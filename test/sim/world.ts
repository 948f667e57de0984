/**
 * The simulated world's clock and dice: virtual time and a seeded generator, so that one seed
 * replays one schedule exactly.
 *
 * The client under test runs unchanged. While a world is installed, the process's timers
 * (setTimeout, setInterval and their clears), performance.now() and Math.random() are the
 * world's: time moves only when the scheduler advances it, and every "random" choice the
 * client makes (back-off jitter) comes from the seed. Nothing else reaches the real event
 * loop's timing: the simulated server is reached through the client's public `open`
 * connector over in-memory streams, and the scheduler waits for the process to be quiet
 * (every microtask and nextTick run) before each step, with the real setImmediate.
 */
import { performance } from 'node:perf_hooks'

/** sfc32: small, fast, and the same sequence for the same seed on every machine. */
export class Rng {
  #a: number
  #b: number
  #c: number
  #d: number

  constructor (seed: number) {
    this.#a = 0x9e3779b9
    this.#b = 0x243f6a88
    this.#c = 0xb7e15162
    this.#d = seed >>> 0
    for (let i = 0; i < 15; i++) this.next()
  }

  /** A float in [0, 1). */
  next (): number {
    const t = (((this.#a + this.#b) | 0) + this.#d) | 0
    this.#d = (this.#d + 1) | 0
    this.#a = this.#b ^ (this.#b >>> 9)
    this.#b = (this.#c + (this.#c << 3)) | 0
    this.#c = (this.#c << 21) | (this.#c >>> 11)
    this.#c = (this.#c + t) | 0
    return (t >>> 0) / 4294967296
  }

  /** An integer in [0, n). */
  int (n: number): number {
    return Math.floor(this.next() * n)
  }

  chance (p: number): boolean {
    return this.next() < p
  }

  pick<T> (items: readonly T[]): T {
    return items[this.int(items.length)]!
  }
}

interface Timer {
  readonly id: number
  at: number
  readonly fn: (...args: unknown[]) => void
  readonly args: unknown[]
  readonly repeat: number
  live: boolean
}

/** What the world hands out for a timer: what Node's Timeout offers that the client uses. */
class TimerHandle {
  readonly timer: Timer
  constructor (timer: Timer) { this.timer = timer }
  unref (): this { return this }
  ref (): this { return this }
  hasRef (): boolean { return true }
  refresh (): this { return this }
  [Symbol.toPrimitive] (): number { return this.timer.id }
}

const real = {
  setTimeout: globalThis.setTimeout,
  clearTimeout: globalThis.clearTimeout,
  setInterval: globalThis.setInterval,
  clearInterval: globalThis.clearInterval,
  setImmediate: globalThis.setImmediate,
  now: performance.now.bind(performance),
  random: Math.random
}

/** Lets every microtask and nextTick run: the real event loop's next check phase. */
export function quiet (): Promise<void> {
  return new Promise((resolve) => { real.setImmediate(resolve) })
}

export class VirtualTime {
  now = 0
  readonly #timers: Timer[] = []
  #nextId = 1
  readonly rng: Rng

  constructor (rng: Rng) {
    this.rng = rng
  }

  install (): void {
    const add = (fn: (...args: unknown[]) => void, ms: number | undefined, args: unknown[], repeat: boolean): TimerHandle => {
      const delay = Math.max(1, Math.floor(ms ?? 0))
      const timer: Timer = { id: this.#nextId++, at: this.now + delay, fn, args, repeat: repeat ? delay : 0, live: true }
      this.#timers.push(timer)
      return new TimerHandle(timer)
    }
    const clear = (handle: unknown): void => {
      if (handle instanceof TimerHandle) handle.timer.live = false
    }
    const g = globalThis as unknown as Record<string, unknown>
    g.setTimeout = (fn: (...args: unknown[]) => void, ms?: number, ...args: unknown[]) => add(fn, ms, args, false)
    g.setInterval = (fn: (...args: unknown[]) => void, ms?: number, ...args: unknown[]) => add(fn, ms, args, true)
    g.clearTimeout = clear
    g.clearInterval = clear
    performance.now = () => this.now
    Math.random = () => this.rng.next()
  }

  uninstall (): void {
    const g = globalThis as unknown as Record<string, unknown>
    g.setTimeout = real.setTimeout
    g.clearTimeout = real.clearTimeout
    g.setInterval = real.setInterval
    g.clearInterval = real.clearInterval
    performance.now = real.now
    Math.random = real.random
  }

  /** When the next live timer is due; Infinity when none is. */
  nextDue (): number {
    let due = Infinity
    for (let i = this.#timers.length - 1; i >= 0; i--) {
      const t = this.#timers[i]!
      if (!t.live) {
        this.#timers.splice(i, 1)
        continue
      }
      if (t.at < due) due = t.at
    }
    return due
  }

  /** Moves time to `to` and runs the earliest timer due by then, if any (one per call). */
  advance (to: number): boolean {
    let first: Timer | undefined
    for (const t of this.#timers) {
      if (t.live && t.at <= to && (first === undefined || t.at < first.at || (t.at === first.at && t.id < first.id))) first = t
    }
    if (first === undefined) {
      if (to > this.now) this.now = to
      return false
    }
    if (first.at > this.now) this.now = first.at
    if (first.repeat > 0) first.at = this.now + first.repeat
    else first.live = false
    first.fn(...first.args)
    return true
  }

  get pendingTimers (): number {
    return this.#timers.filter((t) => t.live).length
  }
}
