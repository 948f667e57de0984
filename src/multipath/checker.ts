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
import { ServerChangedError } from '../errors.ts'
import type { PathSet } from './path-set.ts'

export interface CheckerOptions {
  readonly paths: PathSet
  readonly interval: number
  /** Resolves with what to show as the checker's result; rejects with why the path failed. */
  readonly probe: (index: number) => Promise<string>
  /** The same for a path in use, on one of its live connections; undefined when it has none. */
  readonly checkInUse: (index: number) => Promise<string> | undefined
}

export class PathChecker {
  readonly #options: CheckerOptions
  #timer: NodeJS.Timeout | null = null
  readonly #running = new Set<number>()
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

  async check (index: number): Promise<void> {
    const { paths, probe, checkInUse } = this.#options
    if (this.#stopped || this.#running.has(index)) return
    if (paths.status()[index]!.state === 'disabled') return
    this.#running.add(index)
    try {
      paths.ready(index, await (checkInUse(index) ?? probe(index)))
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err)
      if (err instanceof ServerChangedError) paths.refused(index, reason)
      else paths.failed(index, reason)
    } finally {
      this.#running.delete(index)
    }
  }

  stop (): void {
    this.#stopped = true
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#timer = null
  }
}
