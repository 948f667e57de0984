/**
 * Reassembly rules for a structured READ reply (spec §"Structured reply chunk message",
 * strict-client rule 19). Content chunks may arrive in any order; each must lie inside the
 * request, must not overlap an earlier content chunk, and on success together they must cover
 * every byte. With DF at most one content chunk may arrive.
 *
 *   request   [offset ........................................ offset+length)
 *   chunks         [data)      [hole)  [data)         [data)
 *   ranges    relative [start, end) pairs, in arrival order; touching ones merged on the way
 *
 * Checking costs O(1) per chunk (an overlap with the chunk just before is refused at once),
 * and, when chunks came out of order, one sort at the end: never a scan of earlier chunks per
 * chunk, which a server sending them backwards would make quadratic. The number of chunks is capped by the
 * request's size (MAX_READ_CHUNKS), so bookkeeping stays a fraction of the buffer it fills.
 *
 * An ERROR_OFFSET chunk fails the READ whatever else arrives, so it needs no reservation: it
 * may point into a content chunk that came before it (the spec's order: content first, then
 * the error for an offset it covers) or anywhere else in the request; it only has to lie
 * inside the request. The engine reports the server's error, and the connection lives on.
 *
 * Offsets here are relative numbers: a READ is at most a few MiB, while the absolute offset
 * is a u64 and stays a bigint.
 */
import { ProtocolError } from '../errors.ts'

/**
 * The most chunks (content and ERROR_OFFSET together) one READ reply may have: one per 512
 * bytes (the spec's SHOULD for alignment), and some slack for short reads and error chunks.
 */
export function maxReadChunks (length: number): number {
  return 64 + Math.ceil(length / 512)
}

export class ReadAssembly {
  readonly #offset: bigint
  readonly #length: number
  readonly #df: boolean
  readonly #maxChunks: number
  /** Content ranges in arrival order (touching ones merged). */
  readonly #starts: number[] = []
  readonly #ends: number[] = []
  /** Every range so far began at or after the end of the one before. */
  #inOrder = true
  #covered = 0
  #contentChunks = 0
  #chunks = 0
  #problem: string | undefined

  constructor (offset: bigint, length: number, df: boolean) {
    this.#offset = offset
    this.#length = length
    this.#df = df
    this.#maxChunks = maxReadChunks(length)
  }

  /**
   * Records a content chunk at an absolute offset and returns where it starts relative to the
   * request, so the caller can read its bytes straight into place.
   */
  addContent (chunkOffset: bigint, length: number, what: string): number {
    if (chunkOffset < this.#offset || chunkOffset - this.#offset > BigInt(this.#length - length)) {
      throw new ProtocolError(`${what} at ${chunkOffset}+${length} lies outside the request ${this.#offset}+${this.#length}`)
    }
    if (this.#df && this.#contentChunks > 0) throw new ProtocolError('second content chunk in a READ with the DF flag')
    this.#count()
    const start = Number(chunkOffset - this.#offset)
    const end = start + length
    const last = this.#ends.length - 1
    const lastEnd = last < 0 ? 0 : this.#ends[last]!
    if (last >= 0 && start < lastEnd && end > this.#starts[last]!) {
      // The overlap seen at once; others among out-of-order chunks are found by the final sort.
      throw new ProtocolError(`${what} at request offset ${start}+${length} overlaps an earlier chunk`)
    }
    if (this.#inOrder && last >= 0 && start === lastEnd) {
      this.#ends[last] = end
    } else {
      if (start < lastEnd) this.#inOrder = false
      this.#starts.push(start)
      this.#ends.push(end)
    }
    this.#covered += length
    this.#contentChunks++
    return start
  }

  /** Records an ERROR_OFFSET chunk: it must lie inside the request, and counts as a chunk. */
  addErrorOffset (errorOffset: bigint): void {
    if (errorOffset < this.#offset || errorOffset - this.#offset >= BigInt(this.#length)) {
      throw new ProtocolError(`ERROR_OFFSET at ${errorOffset} lies outside the request ${this.#offset}+${this.#length}`)
    }
    this.#count()
  }

  /** Every byte of the request arrived as data or hole, exactly once. */
  get complete (): boolean {
    return this.problem === undefined
  }

  /** Why the content does not make a whole reply (overlap, or bytes missing); undefined if it does. */
  get problem (): string | undefined {
    if (this.#problem !== undefined) return this.#problem
    if (!this.#inOrder) {
      this.#problem = this.#overlap()
      if (this.#problem !== undefined) return this.#problem
    }
    if (this.#covered !== this.#length) return `content chunks cover ${this.#covered} of ${this.#length} bytes`
    return undefined
  }

  #count (): void {
    if (++this.#chunks > this.#maxChunks) {
      throw new ProtocolError(`more than ${this.#maxChunks} chunks in the reply to a READ of ${this.#length} bytes`)
    }
  }

  /** One sort of the ranges that came out of order: the first overlap, if any. */
  #overlap (): string | undefined {
    const starts = this.#starts
    const ends = this.#ends
    const order = Array.from(starts.keys()).sort((a, b) => starts[a]! - starts[b]!)
    for (let i = 1; i < order.length; i++) {
      const previous = order[i - 1]!
      const next = order[i]!
      if (starts[next]! < ends[previous]!) {
        return `content chunk at request offset ${starts[next]}+${ends[next]! - starts[next]!} overlaps another at ${starts[previous]}+${ends[previous]! - starts[previous]!}`
      }
    }
    return undefined
  }
}
