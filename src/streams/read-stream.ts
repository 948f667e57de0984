/**
 * createReadStream(client, { start, end, sparse, highWaterMark, readAhead, signal }): the export
 * as a Readable, with `readAhead` reads in flight and backpressure (no read starts while the
 * consumer is full).
 *
 *   dense  (default)  Buffers, in order, every byte of [start, end] (end inclusive, as in
 *                     fs.createReadStream): pipeline(createReadStream(c), createGzip(), file)
 *   sparse            object mode: { offset, data } for data and { offset, length, zero: true }
 *                     for runs the server's base:allocation says read as zeroes (not read at
 *                     all); createWriteStream(c, { sparse: true }) takes them as they come
 *
 *   queue (FIFO, ≤ readAhead):  [read 0 ✓][read 1 …][read 2 …]  → push in order, head first
 */
import { Readable } from 'node:stream'
import type { NbdClient } from '../client/nbd-client.ts'
import { InvalidArgumentError } from '../errors.ts'
import { planPieces, type Piece } from '../copy/planner.ts'

export interface ReadStreamOptions {
  /** First byte. @default 0 */
  readonly start?: number
  /** Last byte, inclusive (as fs.createReadStream). @default the export's last byte */
  readonly end?: number
  /** Object mode with zero runs skipped (see the module comment). @default false */
  readonly sparse?: boolean
  /** Bytes per read (the size of each chunk). @default 262144 */
  readonly highWaterMark?: number
  /** Reads in flight. @default 4 */
  readonly readAhead?: number
  readonly signal?: AbortSignal
}

export interface DataChunk {
  readonly offset: number
  readonly data: Buffer
  readonly zero?: false
}

export interface ZeroChunk {
  readonly offset: number
  readonly length: number
  readonly zero: true
}

/** What a sparse read stream yields and a sparse write stream takes. */
export type SparseChunk = DataChunk | ZeroChunk

const DEFAULT_CHUNK = 256 * 1024

interface Pending {
  readonly piece: Piece
  readonly data: Buffer | undefined
  done: boolean
}

export function createReadStream (client: NbdClient, options: ReadStreamOptions = {}): Readable {
  return new NbdReadStream(client, options)
}

class NbdReadStream extends Readable {
  readonly #client: NbdClient
  readonly #sparse: boolean
  readonly #depth: number
  readonly #pieces: AsyncGenerator<Piece>
  readonly #abort = new AbortController()
  readonly #queue: Pending[] = []
  #exhausted = false
  #planning = false
  #wanted = false

  constructor (client: NbdClient, options: ReadStreamOptions) {
    const chunk = positive(options.highWaterMark ?? DEFAULT_CHUNK, 'highWaterMark')
    const sparse = options.sparse === true
    super({
      objectMode: sparse,
      // Object mode counts chunks; either way about readAhead chunks wait for the consumer.
      highWaterMark: sparse ? 4 : chunk,
      ...(options.signal !== undefined && { signal: options.signal })
    })
    this.#client = client
    this.#sparse = sparse
    this.#depth = positive(options.readAhead ?? 4, 'readAhead')
    const size = client.size
    const start = options.start ?? 0
    const end = options.end === undefined ? size : options.end + 1
    if (!Number.isSafeInteger(start) || start < 0 || !Number.isSafeInteger(end) || end < start || end > size) {
      throw new InvalidArgumentError(`read stream range start=${start} end=${options.end} does not fit the export (${size} bytes)`)
    }
    const extents = sparse && client.metaContexts.includes('base:allocation') ? client.map(end - start, start, { signal: this.#abort.signal }) : undefined
    this.#pieces = planPieces(extents, start, end, chunk)
  }

  override _read (): void {
    this.#wanted = true
    this.#fill()
  }

  /** Starts reads until readAhead are in flight (or the consumer is full). */
  #fill (): void {
    if (this.#planning || this.#exhausted || !this.#wanted || this.destroyed) return
    if (this.#queue.length >= this.#depth) return
    this.#planning = true
    this.#pieces.next().then((next) => {
      this.#planning = false
      if (next.done === true) {
        this.#exhausted = true
        this.#drain()
        return
      }
      this.#start(next.value)
      this.#fill()
    }, (err: unknown) => {
      this.#planning = false
      this.destroy(err as Error)
    })
  }

  #start (piece: Piece): void {
    const zero = piece.zero && this.#sparse
    // Dense streams read zero runs too (a zero run is still bytes to a dense consumer).
    const data = zero ? undefined : Buffer.allocUnsafe(piece.length)
    const entry: Pending = { piece, data, done: zero }
    this.#queue.push(entry)
    if (data === undefined) {
      this.#drain()
      return
    }
    this.#client.readInto(data, piece.offset, { signal: this.#abort.signal }).then(() => {
      entry.done = true
      this.#drain()
    }, (err: unknown) => { this.destroy(err as Error) })
  }

  /** Pushes finished reads in order; ends the stream after the last. */
  #drain (): void {
    while (this.#queue.length > 0 && this.#queue[0]!.done && !this.destroyed) {
      const { piece, data } = this.#queue.shift()!
      const chunk = data === undefined
        ? { offset: piece.offset, length: piece.length, zero: true }
        : this.#sparse ? { offset: piece.offset, data } : data
      if (!this.push(chunk)) this.#wanted = false
    }
    if (this.#exhausted && this.#queue.length === 0 && !this.destroyed) {
      this.push(null)
      return
    }
    this.#fill()
  }

  override _destroy (err: Error | null, callback: (error?: Error | null) => void): void {
    this.#abort.abort()
    this.#pieces.return(undefined).catch(() => {})
    callback(err)
  }
}

function positive (n: number, name: string): number {
  if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError(`${name} must be a positive integer, not ${n}`)
  return n
}
