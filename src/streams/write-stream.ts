/**
 * createWriteStream(client, { start, sparse, highWaterMark, requests, flush, signal }): a
 * Writable onto the export, with `requests` writes in flight and backpressure.
 *
 *   dense  (default)  bytes from `start` on. Chunks are copied into a pool of `requests`
 *                     buffers of highWaterMark bytes, so small chunks (gzip's 16 KiB) go out
 *                     as large writes and the writer may reuse its buffers at once.
 *   sparse            object mode, SparseChunks (createReadStream's sparse output): data is
 *                     written where it says (the stream owns `data` from then on: do not
 *                     change it), zero runs become punchHole (WRITE_ZEROES, which may
 *                     deallocate), or nothing with destinationIsZero.
 *
 * 'finish' comes after every write is acknowledged and, with `flush` (the default, where the
 * server has a cache to flush), after FLUSH. A failed write destroys the stream with its error;
 * 'close' waits for every request still on the wire, so nothing lands after it.
 */
import { Writable } from 'node:stream'
import type { NbdClient } from '../client/nbd-client.ts'
import { InvalidArgumentError } from '../errors.ts'
import type { SparseChunk } from './read-stream.ts'

export interface WriteStreamOptions {
  /** Where the first byte goes (dense mode). @default 0 */
  readonly start?: number
  /** Object mode: take SparseChunks. @default false */
  readonly sparse?: boolean
  /** Bytes per write request (dense mode's buffer size). @default 262144 */
  readonly highWaterMark?: number
  /** Writes in flight. @default 4 */
  readonly requests?: number
  /** FLUSH once everything is written, when the server supports it. @default true */
  readonly flush?: boolean
  /** Sparse mode: the export already reads zeroes, so zero chunks are skipped. @default false */
  readonly destinationIsZero?: boolean
  readonly signal?: AbortSignal
}

const DEFAULT_CHUNK = 256 * 1024

export function createWriteStream (client: NbdClient, options: WriteStreamOptions = {}): Writable {
  return new NbdWriteStream(client, options)
}

type Callback = (error?: Error | null) => void

class NbdWriteStream extends Writable {
  readonly #client: NbdClient
  readonly #options: WriteStreamOptions
  readonly #size: number
  readonly #chunk: number
  readonly #requests: number
  readonly #abort = new AbortController()
  readonly #inFlight = new Set<Promise<void>>()
  /** Buffers not in flight. */
  readonly #free: Buffer[] = []
  #current: Buffer | undefined
  #filled = 0
  /** Where the next dense byte goes. */
  #position: number
  /** A _write or _final waiting for a request to finish. */
  #waiting: (() => void) | undefined
  #failed: Error | undefined

  constructor (client: NbdClient, options: WriteStreamOptions) {
    const chunk = options.highWaterMark ?? DEFAULT_CHUNK
    if (!Number.isSafeInteger(chunk) || chunk < 1) throw new InvalidArgumentError(`highWaterMark must be a positive integer, not ${chunk}`)
    const sparse = options.sparse === true
    super({ objectMode: sparse, highWaterMark: sparse ? 4 : chunk, ...(options.signal !== undefined && { signal: options.signal }) })
    this.#client = client
    this.#options = options
    this.#size = client.size
    this.#chunk = chunk
    this.#requests = options.requests ?? 4
    if (!Number.isSafeInteger(this.#requests) || this.#requests < 1) throw new InvalidArgumentError(`requests must be a positive integer, not ${this.#requests}`)
    this.#position = options.start ?? 0
    if (!Number.isSafeInteger(this.#position) || this.#position < 0 || this.#position > this.#size) {
      throw new InvalidArgumentError(`write stream start ${this.#position} is outside the export (${this.#size} bytes)`)
    }
  }

  override _write (chunk: Buffer | Uint8Array | SparseChunk, _encoding: BufferEncoding, callback: Callback): void {
    try {
      if (this.#options.sparse === true) this.#sparse(chunk as SparseChunk)
      else this.#dense(chunk as Uint8Array)
    } catch (err) {
      callback(err as Error)
      return
    }
    this.#whenRoom(callback)
  }

  #dense (bytes: Uint8Array): void {
    if (this.#position + this.#filled + bytes.length > this.#size) {
      throw new InvalidArgumentError(`the write stream runs past the end of the export (${this.#size} bytes)`)
    }
    let at = 0
    while (at < bytes.length) {
      this.#current ??= this.#take()
      const n = Math.min(bytes.length - at, this.#chunk - this.#filled)
      this.#current.set(bytes.subarray(at, at + n), this.#filled)
      this.#filled += n
      at += n
      if (this.#filled === this.#chunk) this.#submitCurrent()
    }
  }

  #sparse (chunk: SparseChunk): void {
    if (chunk.zero === true) {
      if (this.#options.destinationIsZero === true || chunk.length === 0) return
      this.#track(this.#client.punchHole(chunk.length, chunk.offset, { signal: this.#abort.signal }))
      return
    }
    this.#track(this.#client.write(chunk.data, chunk.offset, { signal: this.#abort.signal }))
  }

  /** A buffer for the next dense write: a free one, else a new one (at most requests + 1 exist). */
  #take (): Buffer {
    const free = this.#free.pop()
    if (free !== undefined) return free
    return Buffer.allocUnsafe(this.#chunk)
  }

  #submitCurrent (): void {
    const buffer = this.#current!
    const length = this.#filled
    const offset = this.#position
    this.#current = undefined
    this.#filled = 0
    this.#position += length
    const write = this.#client.write(length === buffer.length ? buffer : buffer.subarray(0, length), offset, { signal: this.#abort.signal })
    this.#track(write, buffer)
  }

  #track (request: Promise<void>, buffer?: Buffer): void {
    const settled: Promise<void> = request.then(() => {}, (err: unknown) => {
      this.#failed ??= err as Error
    }).finally(() => {
      this.#inFlight.delete(settled)
      if (buffer !== undefined) this.#free.push(buffer)
      const wake = this.#waiting
      this.#waiting = undefined
      wake?.()
    })
    this.#inFlight.add(settled)
  }

  /** Calls back once fewer than `requests` writes are in flight (or with the first failure). */
  #whenRoom (callback: Callback): void {
    if (this.#failed !== undefined) {
      callback(this.#failed)
      return
    }
    if (this.#inFlight.size < this.#requests) {
      callback()
      return
    }
    this.#waiting = () => { this.#whenRoom(callback) }
  }

  override _final (callback: Callback): void {
    if (this.#filled > 0) this.#submitCurrent()
    this.#settle().then(async () => {
      if (this.#failed !== undefined) throw this.#failed
      if (this.#options.flush !== false && this.#client.canFlush) await this.#client.flush({ signal: this.#abort.signal })
    }).then(() => { callback() }, (err: unknown) => { callback(err as Error) })
  }

  /** Waits until nothing is in flight. */
  async #settle (): Promise<void> {
    while (this.#inFlight.size > 0) await Promise.all(this.#inFlight)
  }

  override _destroy (err: Error | null, callback: Callback): void {
    // Requests still on the wire finish (or fail) before 'close': nothing lands after it.
    if (err !== null) this.#abort.abort()
    this.#settle().then(() => { callback(err) }, () => { callback(err) })
  }
}
