/**
 * st_blocks from block status, counted a little at a time. A full walk of a large, fragmented
 * export can take minutes (or never end while it keeps changing), so it is never done at once:
 * the export is cut into at most 65536 regions, each remembers its allocated bytes as last
 * counted (its whole length until then), and a step walks on from where the last one stopped,
 * within a time and request budget, wrapping around at the end.
 *
 *   regions   | r0 | r1 | r2 | ... | rN |      st_blocks = Σ data[r] / 512
 *                      ▲ cursor: a step counts on from here; a finished region replaces its sum
 *
 * GETATTR starts a step when none is running and the last one ended at least `intervalMs`
 * ago; it never waits for one. Writes and punches change the count; the next pass over their
 * region picks that up.
 */
import { NBD_STATE_HOLE } from '../protocol/constants.ts'
import type { NbdClient } from '../client/nbd-client.ts'
import type { LogFn } from './log.ts'

export interface AllocationOptions {
  /** Least time from the end of one GETATTR-started step to the start of the next, ms. @default 1000 */
  readonly intervalMs?: number
  /** Time budget of one step, ms (a step always makes at least one request). @default 100 */
  readonly stepMs?: number
  /** Block status requests per step, at most. @default 16 */
  readonly stepRequests?: number
}

type AllocationClient = Pick<NbdClient, 'sizeBigInt' | 'metaContexts' | 'blockStatus'>

const CONTEXT = 'base:allocation'
const MIN_REGION = 64n * 1024n * 1024n
const MAX_REGIONS = 65536n
/** Largest block status request (the client splits nothing for us here). */
const MAX_REQUEST = 1 << 30

export class AllocationCounter {
  readonly #client: AllocationClient
  readonly #log: LogFn
  readonly #enabled: boolean
  readonly #size: bigint
  readonly #regionSize: bigint
  /** Allocated bytes per region, as last counted. */
  readonly #data: Float64Array
  #total: number
  #cursor = 0
  #at = 0n
  /** Allocated bytes counted so far in the cursor's region. */
  #partial = 0
  #running: Promise<void> | null = null
  #lastEnd = 0
  readonly #abort = new AbortController()
  readonly #intervalMs: number
  readonly #stepMs: number
  readonly #stepRequests: number
  /** Completed passes over the whole export. */
  passes = 0
  /** Block status requests made. */
  requests = 0

  constructor (client: AllocationClient, log: LogFn, options: AllocationOptions = {}) {
    this.#client = client
    this.#log = log
    this.#size = client.sizeBigInt
    this.#enabled = client.metaContexts.includes(CONTEXT) && this.#size > 0n
    let region = MIN_REGION
    while ((this.#size + region - 1n) / region > MAX_REGIONS) region *= 2n
    this.#regionSize = region
    const count = Number((this.#size + region - 1n) / region)
    this.#data = new Float64Array(count)
    for (let i = 0; i < count; i++) this.#data[i] = Number(this.#regionEnd(i) - BigInt(i) * region)
    this.#total = Number(this.#size)
    this.#intervalMs = options.intervalMs ?? 1000
    this.#stepMs = options.stepMs ?? 100
    this.#stepRequests = options.stepRequests ?? 16
  }

  /** 512-byte blocks allocated, as counted so far (regions not counted yet count in full). */
  get blocks (): bigint {
    return BigInt(Math.ceil(this.#total / 512))
  }

  /** For GETATTR: starts a step in the background when one is due. */
  maybeRefresh (): void {
    if (!this.#enabled || this.#running !== null || Date.now() - this.#lastEnd < this.#intervalMs) return
    void this.step()
  }

  /** One bounded step of the walk (or the running one). Never rejects. */
  step (budgetMs = this.#stepMs, maxRequests = this.#stepRequests): Promise<void> {
    if (!this.#enabled) return Promise.resolve()
    this.#running ??= this.#walk(budgetMs, maxRequests).catch((err: unknown) => {
      if (!this.#abort.signal.aborted) this.#log('debug', `allocation count: ${String(err)}`)
    }).finally(() => {
      this.#running = null
      this.#lastEnd = Date.now()
    })
    return this.#running
  }

  /** Stops the walk (the request under way is aborted). */
  close (): void {
    this.#abort.abort(new Error('the mount is going away'))
  }

  #regionEnd (region: number): bigint {
    const end = BigInt(region + 1) * this.#regionSize
    return end < this.#size ? end : this.#size
  }

  /** Walks on from the cursor until the budget is spent or the walk has come round once. */
  async #walk (budgetMs: number, maxRequests: number): Promise<void> {
    const deadline = Date.now() + budgetMs
    const signal = this.#abort.signal
    const passes = this.passes
    for (let n = 0; n < maxRequests && (n === 0 || Date.now() < deadline) && !signal.aborted && this.passes === passes; n++) {
      const end = this.#regionEnd(this.#cursor)
      const left = end - this.#at
      const status = await this.#client.blockStatus(left < BigInt(MAX_REQUEST) ? Number(left) : MAX_REQUEST, this.#at, { signal })
      this.requests++
      const extents = status.get(CONTEXT) ?? []
      if (extents.length === 0) throw new Error(`no ${CONTEXT} extents at offset ${this.#at}`)
      for (const e of extents) {
        const room = end - this.#at
        const length = BigInt(e.length) < room ? e.length : Number(room)
        if ((e.flags & NBD_STATE_HOLE) === 0) this.#partial += length
        this.#at += BigInt(length)
        if (this.#at >= end) break
      }
      if (this.#at >= end) this.#finishRegion()
    }
  }

  #finishRegion (): void {
    const region = this.#cursor
    this.#total += this.#partial - this.#data[region]!
    this.#data[region] = this.#partial
    this.#partial = 0
    this.#cursor = region + 1 === this.#data.length ? 0 : region + 1
    if (this.#cursor === 0) this.passes++
    this.#at = BigInt(this.#cursor) * this.#regionSize
  }
}
