/**
 * Reply buffers for READ, reused by exact length: FUSE reads come in a few sizes (4 KiB, the
 * readahead size, max_read), so an allocation per request would only feed the garbage
 * collector. Bounded in bytes, so a burst of large reads does not stay in the daemon's memory.
 */
const MAX_POOLED_BYTES = 16 * 1024 * 1024
const SIZES = 16

export class BufferPool {
  readonly #free = new Map<number, Buffer[]>()
  #pooled = 0

  take (length: number): Buffer {
    const buffer = this.#free.get(length)?.pop()
    if (buffer === undefined) return Buffer.allocUnsafe(length)
    this.#pooled -= length
    return buffer
  }

  /** Lets every pooled buffer go (idle after a burst). */
  clear (): void {
    this.#free.clear()
    this.#pooled = 0
  }

  give (buffer: Buffer): void {
    if (this.#pooled + buffer.length > MAX_POOLED_BYTES) return
    let list = this.#free.get(buffer.length)
    if (list === undefined) {
      if (this.#free.size >= SIZES) return
      list = []
      this.#free.set(buffer.length, list)
    }
    list.push(buffer)
    this.#pooled += buffer.length
  }
}
