/**
 * Byte-range locks for read-modify-write. When the server's minimum block size is above 1, an
 * unaligned write reads the partial blocks around it, patches them and writes them back;
 * nothing else may write those blocks in between, or the write-back would undo it.
 *
 *   aligned write   shared    [=====)            shared ranges may overlap each other
 *   RMW             exclusive      [====)        exclusive conflicts with any overlap
 *
 * Grants are FIFO among overlapping requests, so an RMW is not starved by a stream of
 * aligned writes. Unused when the minimum block size is 1 (then nothing is ever read back).
 */
import { AbortedError } from '../errors.ts'

interface Range {
  readonly start: bigint
  readonly end: bigint
  readonly exclusive: boolean
}

interface Waiter extends Range {
  readonly grant: (release: () => void) => void
}

const overlaps = (a: Range, b: Range): boolean => a.start < b.end && b.start < a.end
const conflicts = (a: Range, b: Range): boolean => (a.exclusive || b.exclusive) && overlaps(a, b)

export class RangeLock {
  readonly #held = new Set<Range>()
  readonly #waiting: Waiter[] = []

  get held (): number {
    return this.#held.size
  }

  /** Resolves with a release function once [start, end) is ours. */
  acquire (start: bigint, end: bigint, exclusive: boolean, signal?: AbortSignal): Promise<() => void> {
    const range = { start, end, exclusive }
    if (this.#grantable(range, this.#waiting.length)) return Promise.resolve(this.#take(range))
    if (signal?.aborted === true) return Promise.reject(new AbortedError(signal.reason))
    return new Promise((resolve, reject) => {
      const onAbort = (): void => {
        const i = this.#waiting.indexOf(waiter)
        if (i >= 0) this.#waiting.splice(i, 1)
        reject(new AbortedError(signal?.reason))
        this.#pump()
      }
      const waiter: Waiter = {
        ...range,
        grant: (release) => {
          signal?.removeEventListener('abort', onAbort)
          resolve(release)
        }
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      this.#waiting.push(waiter)
    })
  }

  #grantable (range: Range, position: number): boolean {
    for (const held of this.#held) if (conflicts(range, held)) return false
    for (let i = 0; i < position; i++) if (conflicts(range, this.#waiting[i]!)) return false
    return true
  }

  #take (range: Range): () => void {
    this.#held.add(range)
    let released = false
    return () => {
      if (released) return
      released = true
      this.#held.delete(range)
      this.#pump()
    }
  }

  #pump (): void {
    for (let i = 0; i < this.#waiting.length;) {
      const waiter = this.#waiting[i]!
      if (this.#grantable(waiter, i)) {
        this.#waiting.splice(i, 1)
        waiter.grant(this.#take(waiter))
      } else {
        i++
      }
    }
  }
}
