/**
 * The path checker (multipathd's checker loop): every `interval` ms each path is looked at.
 * A path that carries a live connection is ready by that fact (a separate probe connection
 * could wait forever on a server that takes one client at a time); any other path, standby or
 * failed, gets a probe: a connection of its own, the identity check, one small READ, and
 * NBD_CMD_DISC. Probes of one path never overlap, and each is bounded.
 */
import { ServerChangedError } from '../errors.ts'
import type { PathSet } from './path-set.ts'

export interface CheckerOptions {
  readonly paths: PathSet
  readonly interval: number
  /** Resolves with what to show as the checker's result; rejects with why the path failed. */
  readonly probe: (index: number) => Promise<string>
  /** Live connections over the path. */
  readonly linksOn: (index: number) => number
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
    const { paths, probe, linksOn } = this.#options
    if (this.#stopped || this.#running.has(index)) return
    if (paths.status()[index]!.state === 'disabled') return
    if (linksOn(index) > 0) {
      paths.ready(index, 'in use')
      return
    }
    this.#running.add(index)
    try {
      paths.ready(index, await probe(index))
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
