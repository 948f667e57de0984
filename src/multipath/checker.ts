/**
 * The path checker (multipathd's checker loop): every `interval` ms each path is looked at,
 * active and standby alike.
 *
 *   a path that carries connections ─► one small READ on one of them, now (outside the queue):
 *                                      no answer within the bound ─► failed (I/O moves away)
 *   any other path (standby, failed) ─► a probe: a connection of its own, the identity check,
 *                                      one small READ, NBD_CMD_DISC
 *
 * A path in use is not probed over a second connection: a server that takes one client at a
 * time would never answer it. Checks of one path never overlap, and each is bounded.
 */
import { ServerChangedError, publicError } from '../errors.ts'
import type { PathSet } from './path-set.ts'

export interface CheckerOptions {
  readonly paths: PathSet
  readonly interval: number
  /**
   * Resolves with what to show as the checker's result; rejects with why the path failed.
   * `stop` aborts it (the client is closing).
   */
  readonly probe: (index: number, stop: AbortSignal) => Promise<string>
  /**
   * The same for a path in use, on one of its live connections; undefined when it has none.
   * Resolves undefined when it cannot tell (the connection moved elsewhere meanwhile).
   */
  readonly checkInUse: (index: number) => Promise<string | undefined> | undefined
}

export class PathChecker {
  readonly #options: CheckerOptions
  #timer: NodeJS.Timeout | null = null
  readonly #running = new Map<number, Promise<void>>()
  readonly #stop = new AbortController()
  #stopped = false

  constructor (options: CheckerOptions) {
    this.#options = options
  }

  start (): void {
    if (this.#stopped || this.#timer !== null) return
    this.#timer = setInterval(() => { void this.checkAll() }, this.#options.interval)
    this.#timer.unref()
  }

  /** One round now; resolves once every probe of it has settled. */
  async checkAll (): Promise<void> {
    const { paths } = this.#options
    const rounds: Array<Promise<void>> = []
    for (let i = 0; i < paths.size; i++) rounds.push(this.check(i))
    await Promise.all(rounds)
  }

  check (index: number): Promise<void> {
    const { paths } = this.#options
    if (this.#stopped || paths.stateOf(index) === 'disabled') return Promise.resolve()
    let running = this.#running.get(index)
    if (running === undefined) {
      running = this.#check(index).finally(() => { this.#running.delete(index) })
      this.#running.set(index, running)
    }
    return running
  }

  async #check (index: number): Promise<void> {
    const { paths, probe, checkInUse } = this.#options
    try {
      const verdict = await (checkInUse(index) ?? probe(index, this.#stop.signal))
      if (this.#stopped) return
      if (verdict !== undefined) paths.ready(index, verdict)
    } catch (err) {
      if (this.#stopped) return
      const reason = err instanceof Error ? err.message : String(err)
      if (err instanceof ServerChangedError) paths.refused(index, reason)
      else paths.failed(index, reason, publicError(err))
    }
  }

  /** No more checks; the running ones are aborted. Resolves once they have ended. */
  async stop (): Promise<void> {
    this.#stopped = true
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#timer = null
    this.#stop.abort(new Error('the client is closing'))
    await Promise.all(this.#running.values())
  }
}
