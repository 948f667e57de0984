/**
 * The control server's per-client log lines (a dropped connection, a timeout mid-request, an
 * idle close), at most `lines` per uid per interval: any local user can open connections as
 * fast as the kernel lets them, and each bad one would otherwise be a line in root's log. The
 * excess is counted and said in one line per uid once the interval ends.
 */
import { performance } from 'node:perf_hooks'

export type LimitedLog = (level: 'debug' | 'info' | 'warn' | 'error', message: string) => void

interface Window {
  start: number
  lines: number
  suppressed: number
  level: 'debug' | 'info' | 'warn' | 'error'
  timer: NodeJS.Timeout | null
}

export class LogLimiter {
  readonly #log: LimitedLog
  readonly #lines: number
  readonly #intervalMs: number
  readonly #windows = new Map<string, Window>()

  constructor (log: LimitedLog, options: { lines?: number, intervalMs?: number } = {}) {
    this.#log = log
    this.#lines = options.lines ?? 5
    this.#intervalMs = options.intervalMs ?? 10_000
  }

  /** One line about a client of `who` ("uid 65534"). */
  log (who: string, level: Window['level'], message: string): void {
    const now = performance.now()
    let w = this.#windows.get(who)
    if (w !== undefined && now - w.start >= this.#intervalMs) {
      this.#summarise(who, w)
      w = undefined
    }
    if (w === undefined) {
      w = { start: now, lines: 0, suppressed: 0, level, timer: null }
      this.#windows.set(who, w)
    }
    if (w.lines < this.#lines) {
      w.lines++
      this.#log(level, message)
      return
    }
    w.suppressed++
    if (level === 'warn' || level === 'error') w.level = level
    if (w.timer === null) {
      const window = w
      w.timer = setTimeout(() => {
        window.timer = null
        if (this.#windows.get(who) === window) this.#summarise(who, window)
      }, Math.max(0, this.#intervalMs - (now - w.start)))
      w.timer.unref()
    }
  }

  /** No more lines; the pending summaries are said now. */
  close (): void {
    for (const [who, w] of [...this.#windows]) this.#summarise(who, w)
  }

  #summarise (who: string, w: Window): void {
    if (w.timer !== null) clearTimeout(w.timer)
    w.timer = null
    this.#windows.delete(who)
    if (w.suppressed > 0) {
      this.#log(w.level, `control clients of ${who}: ${w.suppressed} more lines like the above in ${Math.round(this.#intervalMs / 1000)} s, not logged one by one`)
    }
  }
}
