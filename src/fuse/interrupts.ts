/**
 * The FUSE requests whose client request is under way, by unique: for INTERRUPT, and to know
 * when all are done (unmount drains them).
 *
 *   track ──► pending ──client settles──► reply (unless answered) ──► after() ──► gone
 *                └──INTERRUPT──► EINTR now (answered); the signal aborts the client request
 *
 * An interrupted request is answered EINTR at once, whatever it is: the process waiting for it
 * (often one being killed) must not wait for the server. Its client request finishes unobserved
 * and keeps its buffers until then. Requests that change the export (WRITE, FALLOCATE) and the
 * long synchronous ones (FSYNC, LSEEK) carry an AbortSignal: aborting it tells the client the
 * caller has gone, and the client keeps the request ordered until its life on the wire ends,
 * so a later write to the same range cannot be overtaken by it. READ carries none: a dropped
 * read orders against nothing.
 *
 * Signals for WRITE are pooled: an AbortController that was not aborted is as good as new once
 * its request settled (the client removes its listeners), so the data path allocates none.
 *
 * The kernel sends no INTERRUPT for background requests (direct I/O under FUSE_ASYNC_DIO,
 * where a caller in D state waits for the answer even under SIGKILL). So a request waiting
 * longer than a second has its caller looked at, once a second: a caller with SIGKILL
 * pending (the kernel turns every fatal signal into one) is answered EINTR as on an INTERRUPT,
 * and can die. See fatal-signals.ts.
 */
import type { FuseChannel } from './channel.ts'
import { ERRNO, errnoOf } from './errno.ts'
import { fatalSignalPending } from './fatal-signals.ts'
import type { LogFn } from './log.ts'

/** What an interruptible request passes to the client: `{ signal }`, made once per controller. */
export interface SignalOptions {
  readonly signal: AbortSignal
}

interface Interruptible {
  readonly controller: AbortController
  readonly options: SignalOptions
}

interface Pending {
  readonly interruptible: Interruptible | null
  /** Answered early (EINTR); the client request's outcome is dropped. */
  answered: boolean
  /** The caller's thread id (fuse_in_header.pid; 0 when the kernel gives none). */
  readonly pid: number
  readonly startedAt: number
}

const NO_OPTIONS: Partial<SignalOptions> = Object.freeze({})
const POOL_MAX = 256
/** How often, and after how long, a waiting request's caller is looked at (ms). */
const KILL_CHECK_MS = 1000

export class RequestTracker {
  readonly #channel: Pick<FuseChannel, 'reply'>
  readonly #log: LogFn
  readonly #pending = new Map<number, Pending>()
  readonly #pool: Interruptible[] = []
  #idleWaiters: Array<() => void> = []
  #killCheck: NodeJS.Timeout | null = null
  errors = 0
  interrupted = 0
  /** Callers that died with a request pending (no INTERRUPT came). */
  killed = 0
  /**
   * The thread id of the request being dispatched, set by the dispatcher before it calls an
   * I/O op (which then calls track): one field instead of a pid through every op.
   */
  requester = 0

  constructor (channel: Pick<FuseChannel, 'reply'>, log: LogFn) {
    this.#channel = channel
    this.#log = log
  }

  get inFlight (): number {
    return this.#pending.size
  }

  /** Resolves once no tracked request is pending. */
  idle (): Promise<void> {
    if (this.#pending.size === 0) return Promise.resolve()
    return new Promise((resolve) => { this.#idleWaiters.push(resolve) })
  }

  /**
   * Runs the client request for FUSE request `unique`: `done` answers it on success, a
   * failure is answered with its errno; `after` runs once it has settled, answered or not
   * (buffers and slots are released there). `interruptible` gives `run` a signal to pass on.
   */
  track<T> (unique: number, interruptible: boolean, run: (options: Partial<SignalOptions>) => Promise<T>,
    done: (result: T) => void, after?: () => void): void {
    const signal = interruptible ? (this.#pool.pop() ?? newInterruptible()) : null
    const pending: Pending = { interruptible: signal, answered: false, pid: this.requester, startedAt: performance.now() }
    this.#pending.set(unique, pending)
    if (this.#killCheck === null) {
      this.#killCheck = setInterval(() => { this.#checkCallers() }, KILL_CHECK_MS)
      this.#killCheck.unref()
    }
    let running: Promise<T>
    try {
      running = run(signal === null ? NO_OPTIONS : signal.options)
    } catch (err) {
      running = Promise.reject(err)
    }
    running.then(
      (result) => { if (!pending.answered) done(result) },
      (err: unknown) => {
        if (pending.answered) return
        this.errors++
        const errno = errnoOf(err)
        if (errno !== ERRNO.EINTR) this.#log('debug', `request ${unique} failed: ${String(err)}`)
        this.#channel.reply(unique, errno)
      }
    ).finally(() => {
      this.#pending.delete(unique)
      if (signal !== null && !signal.controller.signal.aborted && this.#pool.length < POOL_MAX) this.#pool.push(signal)
      after?.()
      if (this.#pending.size === 0 && this.#idleWaiters.length > 0) {
        const waiters = this.#idleWaiters
        this.#idleWaiters = []
        for (const w of waiters) w()
      }
    })
  }

  /** FUSE_INTERRUPT for request `target`, itself request `unique` (which gets no reply but EAGAIN). */
  interrupt (target: number, unique: number): void {
    const pending = this.#pending.get(target)
    if (pending === undefined || pending.answered) {
      // Already answered (or not read yet): the kernel re-sends the interrupt after EAGAIN.
      this.#channel.reply(unique, ERRNO.EAGAIN)
      return
    }
    this.interrupted++
    this.#answerEintr(target, pending, `interrupted by the kernel (FUSE request ${target})`)
  }

  /** Stops looking at callers (the mount is going). */
  close (): void {
    this.#stopKillCheck()
  }

  #answerEintr (unique: number, pending: Pending, why: string): void {
    pending.answered = true
    this.#channel.reply(unique, ERRNO.EINTR)
    pending.interruptible?.controller.abort(new Error(why))
  }

  #stopKillCheck (): void {
    if (this.#killCheck !== null) clearInterval(this.#killCheck)
    this.#killCheck = null
  }

  /** Answers EINTR every request older than KILL_CHECK_MS whose caller is being killed. */
  #checkCallers (): void {
    // Stopped here rather than when the last request settles: no timer churn on the data path.
    if (this.#pending.size === 0) {
      this.#stopKillCheck()
      return
    }
    const old = performance.now() - KILL_CHECK_MS
    const verdicts = new Map<number, boolean>()
    for (const [unique, pending] of this.#pending) {
      if (pending.answered || pending.pid <= 0 || pending.startedAt > old) continue
      let dying = verdicts.get(pending.pid)
      if (dying === undefined) {
        dying = fatalSignalPending(pending.pid)
        verdicts.set(pending.pid, dying)
      }
      if (!dying) continue
      this.killed++
      this.#log('info', `request ${unique}: its caller (thread ${pending.pid}) is being killed; answered EINTR so it can go (the request itself runs on)`)
      this.#answerEintr(unique, pending, `its caller (thread ${pending.pid}) was killed (FUSE request ${unique})`)
    }
  }
}

function newInterruptible (): Interruptible {
  const controller = new AbortController()
  return { controller, options: { signal: controller.signal } }
}
