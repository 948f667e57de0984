/**
 * Allocation-free socket reads. Node normally allocates a fresh 64 KiB buffer for every read()
 * on a socket; with `onread` the socket reads into buffers we hand it instead. The hook is
 * created with the socket (onread must be given to net.connect) and the reader attaches to it
 * once the socket is open.
 *
 * Buffers come from a small pool. The reader counts, per pool buffer, the buffered chunks that
 * are views of it (`refs`); after each read Node asks for the next buffer, and gets one whose
 * count is zero. Only when every pooled buffer still holds unconsumed bytes is another one
 * allocated. Views handed to consumers outside the chunk list are used synchronously (before
 * the event loop reads again), so reuse never overwrites bytes someone still needs.
 */
import type { Socket } from 'node:net'

export const READ_BUFFER_SIZE = 256 * 1024
const POOL_LIMIT = 8

export class PooledBuffer {
  readonly buf: Buffer
  /** Buffered chunks that are views of this buffer. */
  refs = 0
  constructor (size: number) {
    this.buf = Buffer.allocUnsafe(size)
  }
}

export interface ReadSink {
  /** Bytes arrived in `view`, a view of `source`; only valid while source.refs counts it. */
  onBytes: (view: Buffer, source: PooledBuffer) => void
}

const hooks = new WeakMap<object, ReadHook>()

export class ReadHook {
  readonly #pool: PooledBuffer[] = [new PooledBuffer(READ_BUFFER_SIZE)]
  #current = this.#pool[0]!
  #sink: ReadSink | null = null
  /** Bytes that arrived before a reader attached (copied: nobody could consume them yet). */
  #early: Buffer[] = []

  readonly options = {
    buffer: (): Buffer => this.#nextBuffer(),
    callback: (n: number, buf: Uint8Array): boolean => {
      const view = Buffer.from(buf.buffer, buf.byteOffset, n)
      if (this.#sink !== null) this.#sink.onBytes(view, this.#current)
      else this.#early.push(Buffer.from(view))
      // Flow control is the reader's, through pause()/resume(); never pause from here.
      return true
    }
  }

  attach (sink: ReadSink): Buffer[] {
    this.#sink = sink
    const early = this.#early
    this.#early = []
    return early
  }

  detach (): void {
    this.#sink = null
  }

  #nextBuffer (): Buffer {
    if (this.#current.refs === 0) return this.#current.buf
    const free = this.#pool.find((p) => p.refs === 0)
    this.#current = free ?? new PooledBuffer(READ_BUFFER_SIZE)
    // Past the limit, extra buffers are one-offs for the garbage collector.
    if (free === undefined && this.#pool.length < POOL_LIMIT) this.#pool.push(this.#current)
    return this.#current.buf
  }

  static for (socket: object): ReadHook | undefined {
    return hooks.get(socket)
  }

  static register (socket: Socket, hook: ReadHook): void {
    hooks.set(socket, hook)
  }
}
