/**
 * Copy progress: the copier adds bytes as pieces finish (a counter, nothing else); a timer
 * reports them in one of three forms.
 *
 *   bar      a TTY: cli-progress's bar with bytes, rate and ETA, cleared at the end
 *   percent  nbdcopy's --progress=FD format: "N/100" lines, one per change (also --progress
 *            when stderr is not a terminal)
 *   json     one JSON object a second and a last one with "done": true:
 *            {"bytes":…,"total":…,"percent":…,"rate":…,"eta":…,"elapsed":…,"done":false}
 */
import { fstatSync, writeSync } from 'node:fs'
import { InvalidArgumentError } from '../errors.ts'

export interface ProgressReport {
  readonly bytes: number
  /** undefined when the source is a pipe. */
  readonly total: number | undefined
  /** Bytes per second, over the recent past. */
  readonly rate: number
  /** Seconds left at that rate, when it can be told. */
  readonly eta: number | undefined
  readonly elapsed: number
  /** The copy finished. */
  readonly done: boolean
  /** The last report (done, failed or interrupted). */
  readonly final: boolean
}

export interface ProgressReporter {
  /** How often report() is called, ms. */
  readonly interval: number
  report: (r: ProgressReport) => void
}

export class Progress {
  readonly #total: number | undefined
  readonly #reporter: ProgressReporter | undefined
  readonly #started = performance.now()
  #bytes = 0
  #rate = 0
  #lastBytes = 0
  #lastTime = this.#started
  #timer: NodeJS.Timeout | undefined

  constructor (total: number | undefined, reporter: ProgressReporter | undefined) {
    this.#total = total
    this.#reporter = reporter
    if (reporter !== undefined) {
      this.#timer = setInterval(() => { this.#report(false, false) }, reporter.interval)
      this.#timer.unref()
      this.#report(false, false)
    }
  }

  get bytes (): number {
    return this.#bytes
  }

  add (n: number): void {
    this.#bytes += n
  }

  /** The last report (done: true when the copy finished) and the timer stopped. */
  stop (done: boolean): void {
    clearInterval(this.#timer)
    this.#timer = undefined
    if (this.#reporter !== undefined) this.#report(done, true)
  }

  #report (done: boolean, final: boolean): void {
    const now = performance.now()
    const dt = (now - this.#lastTime) / 1000
    if (dt > 0) {
      // An average over roughly the last five seconds: steady, yet it follows a slow-down.
      const instant = (this.#bytes - this.#lastBytes) / dt
      const weight = Math.min(1, dt / 5)
      this.#rate = this.#rate === 0 ? instant : this.#rate + (instant - this.#rate) * weight
      this.#lastBytes = this.#bytes
      this.#lastTime = now
    }
    const left = this.#total === undefined ? undefined : this.#total - this.#bytes
    this.#reporter!.report({
      bytes: this.#bytes,
      total: this.#total,
      rate: this.#rate,
      eta: left === undefined || this.#rate <= 0 ? undefined : left / this.#rate,
      elapsed: (now - this.#started) / 1000,
      done,
      final
    })
  }
}

/**
 * Lines to a file descriptor, checked open now; a reader that goes away later (EPIPE) ends the
 * reports, never the copy.
 */
function lineWriter (fd: number): (line: string) => void {
  try {
    fstatSync(fd)
  } catch {
    throw new InvalidArgumentError(`progress file descriptor ${fd} is not open`)
  }
  let broken = false
  return (line) => {
    if (broken) return
    try {
      writeSync(fd, line)
    } catch {
      broken = true
    }
  }
}

const percent = (r: ProgressReport): number => r.total === undefined || r.total === 0 ? (r.done ? 100 : 0) : Math.floor(r.bytes * 100 / r.total)

/** "N/100" lines, as nbdcopy --progress=FD writes them (virt-v2v reads these). */
export function percentReporter (fd: number): ProgressReporter {
  const write = lineWriter(fd)
  let last = -1
  return {
    interval: 100,
    report: (r) => {
      const p = r.done ? 100 : Math.min(99, percent(r))
      if (p === last) return
      last = p
      write(`${p}/100\n`)
    }
  }
}

export function jsonReporter (fd: number): ProgressReporter {
  const write = lineWriter(fd)
  return {
    interval: 1000,
    report: (r) => {
      const line = {
        bytes: r.bytes,
        total: r.total ?? null,
        percent: r.total === undefined ? null : Math.round(r.bytes * 1000 / Math.max(1, r.total)) / 10,
        rate: Math.round(r.rate),
        eta: r.eta === undefined ? null : Math.round(r.eta * 10) / 10,
        elapsed: Math.round(r.elapsed * 1000) / 1000,
        done: r.done
      }
      write(JSON.stringify(line) + '\n')
    }
  }
}

/** A bar on a terminal (stderr): bytes, rate, ETA. cli-progress is loaded only for it. */
export async function barReporter (stream: NodeJS.WriteStream): Promise<ProgressReporter> {
  const { default: cliProgress } = await import('cli-progress')
  const bar = new cliProgress.SingleBar({
    stream,
    format: ' {bar} {percentage}% | {done} of {size} | {speed} | ETA {left}',
    barCompleteChar: '\u2588',
    barIncompleteChar: '\u2591',
    hideCursor: true,
    clearOnComplete: false,
    fps: 10,
    noTTYOutput: false
  })
  let started = false
  return {
    interval: 200,
    report: (r) => {
      const payload = {
        done: bytes(r.bytes),
        size: r.total === undefined ? '?' : bytes(r.total),
        speed: `${bytes(r.rate)}/s`,
        left: r.eta === undefined ? '-' : duration(r.eta)
      }
      const total = r.total ?? Math.max(1, r.bytes)
      if (!started) {
        bar.start(total, r.bytes, payload)
        started = true
      } else {
        bar.setTotal(total)
        bar.update(r.bytes, payload)
      }
      if (r.final) bar.stop()
    }
  }
}

function bytes (n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = n
  let u = 0
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++ }
  return `${u === 0 ? v : v.toFixed(1)} ${units[u]}`
}

function duration (seconds: number): string {
  const s = Math.round(seconds)
  if (s < 60) return `${s}s`
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`
  return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, '0')}m`
}
