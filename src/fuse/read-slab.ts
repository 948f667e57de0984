/**
 * READ reply buffers from one fixed slab: `count` slots of `size` bytes (max_read) in one
 * anonymous mapping, as many as the client can have reads in flight. A READ takes a slot, the
 * server's payload lands in it, the reply is written from it, and the slot comes back: nothing
 * is left to the garbage collector, so a stream of 1 MiB reads no longer leaves buffers behind
 * waiting for a collection (the pool keyed by length it replaced kept up to 16 MiB free and let
 * every buffer past that go to the collector: 20–40 MiB of the daemon's peak).
 *
 *   slab:  | slot 0 | slot 1 | ... | slot count-1 |    pages resident only once written
 *   free:  a stack (the most recently used first: the pages in use stay few; 4 KiB reads
 *          keep touching one page of the top slot)
 *   take() ─► pop (none free, or longer than a slot: a heap buffer, left to the collector)
 *   give() ─► push (exactly once per take; heap buffers are dropped)
 *   trim() ─► free slots' pages back to the kernel (idle after a burst)
 *
 * Without koffi (no mmap) the slab is one Buffer: malloc maps it too, lazily, but then idle
 * trimming cannot give its pages back.
 */
import { discardPages, pageMemory, type PageMemory } from '../util/libc.ts'

/** A slot, or HEAP for a buffer that is not from the slab. */
export const HEAP = -1

export class ReadSlab {
  readonly #size: number
  readonly #memory: PageMemory | undefined
  readonly #buffer: Buffer
  readonly #free: number[] = []
  /** Each slot's last view (reused while reads keep asking for the same length). */
  readonly #views: Array<Buffer | undefined>
  /** 1 while a slot is taken. */
  readonly #busy: Uint8Array
  /** READs served from the heap (the slab was empty, or the read longer than a slot). */
  heapReads = 0

  constructor (count: number, size: number) {
    this.#size = size
    try {
      this.#memory = pageMemory(count * size, 'the READ slab')
      this.#buffer = this.#memory.buffer
    } catch {
      this.#buffer = Buffer.allocUnsafeSlow(count * size)
    }
    this.#views = new Array<Buffer | undefined>(count)
    this.#busy = new Uint8Array(count)
    for (let slot = count - 1; slot >= 0; slot--) this.#free.push(slot)
  }

  /** A slot for `length` bytes (HEAP when none is free or it is longer than a slot). */
  take (length: number): number {
    if (length > this.#size) {
      this.heapReads++
      return HEAP
    }
    const slot = this.#free.pop()
    if (slot === undefined) {
      this.heapReads++
      return HEAP
    }
    this.#busy[slot] = 1
    return slot
  }

  /** The first `length` bytes of `slot` (a new heap buffer for HEAP). */
  view (slot: number, length: number): Buffer {
    if (slot === HEAP) return Buffer.allocUnsafe(length)
    const last = this.#views[slot]
    if (last !== undefined && last.length === length) return last
    const start = slot * this.#size
    return (this.#views[slot] = this.#buffer.subarray(start, start + length))
  }

  give (slot: number): void {
    if (slot === HEAP) return
    // A slot given twice would let two reads share a buffer: refuse, where the bug is made.
    if (this.#busy[slot] !== 1) throw new Error(`READ slab slot ${slot} given back while free`)
    this.#busy[slot] = 0
    this.#free.push(slot)
  }

  /** Gives the pages of every free slot back to the kernel. */
  trim (): void {
    if (this.#memory === undefined) return
    for (const slot of this.#free) discardPages(this.#memory, slot * this.#size, this.#size)
  }
}
