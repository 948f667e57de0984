/**
 * Reply buffers for READ, reused by exact length: FUSE reads come in a few sizes (4 KiB, the
 * readahead size, max_read), so an allocation per request would only feed the garbage
 * collector. Bounded, so an odd mix of sizes cannot hoard memory.
 */
const PER_SIZE = 64
const SIZES = 16

export class BufferPool {
  readonly #free = new Map<number, Buffer[]>()

  take (length: number): Buffer {
    return this.#free.get(length)?.pop() ?? Buffer.allocUnsafe(length)
  }

  give (buffer: Buffer): void {
    let list = this.#free.get(buffer.length)
    if (list === undefined) {
      if (this.#free.size >= SIZES) return
      list = []
      this.#free.set(buffer.length, list)
    }
    if (list.length < PER_SIZE) list.push(buffer)
  }
}
