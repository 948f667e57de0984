/**
 * Reassembly rules for a structured READ reply (spec §"Structured reply chunk message",
 * strict-client rule 19). Content chunks may arrive in any order; each must lie inside the
 * request, must not overlap an earlier content or error chunk, and on success together they
 * must cover every byte. With DF at most one content chunk may arrive.
 *
 *   request   [offset ........................................ offset+length)
 *   chunks         [data)      [hole)  [data)         [data)
 *   covered   kept as sorted, disjoint [start, end) pairs relative to offset
 *
 * Offsets here are relative numbers: a READ is at most a few MiB, while the absolute offset
 * is a u64 and stays a bigint.
 */
import { ProtocolError } from '../errors.ts'

export class ReadAssembly {
  readonly #offset: bigint
  readonly #length: number
  readonly #df: boolean
  /** Sorted, disjoint, flattened [start0, end0, start1, end1, ...]. */
  #ranges: number[] = []
  #covered = 0
  #contentChunks = 0

  constructor (offset: bigint, length: number, df: boolean) {
    this.#offset = offset
    this.#length = length
    this.#df = df
  }

  /**
   * Records a content chunk at an absolute offset and returns where it starts relative to the
   * request, so the caller can read its bytes straight into place.
   */
  addContent (chunkOffset: bigint, length: number, what: string): number {
    if (chunkOffset < this.#offset || chunkOffset - this.#offset > BigInt(this.#length - length)) {
      throw new ProtocolError(`${what} at ${chunkOffset}+${length} lies outside the request ${this.#offset}+${this.#length}`)
    }
    if (this.#df && this.#contentChunks > 0) throw new ProtocolError(`second content chunk in a READ with the DF flag`)
    const start = Number(chunkOffset - this.#offset)
    this.#insert(start, start + length, what)
    this.#covered += length
    this.#contentChunks++
    return start
  }

  /** Records an ERROR_OFFSET chunk: later content may not cover that byte. */
  addErrorOffset (errorOffset: bigint): void {
    if (errorOffset < this.#offset || errorOffset - this.#offset >= BigInt(this.#length)) {
      throw new ProtocolError(`ERROR_OFFSET at ${errorOffset} lies outside the request ${this.#offset}+${this.#length}`)
    }
    const at = Number(errorOffset - this.#offset)
    // The byte may already be covered by earlier content (content comes first); then there is
    // nothing to reserve.
    if (!this.#contains(at)) this.#insert(at, at + 1, 'ERROR_OFFSET')
  }

  /** Every byte of the request arrived as data or hole. */
  get complete (): boolean {
    return this.#covered === this.#length
  }

  #contains (at: number): boolean {
    const r = this.#ranges
    for (let i = 0; i < r.length; i += 2) {
      if (at >= r[i]! && at < r[i + 1]!) return this.#covered === this.#length
    }
    return false
  }

  #insert (start: number, end: number, what: string): void {
    const r = this.#ranges
    // Find the first range that ends after our start; it must begin at or after our end.
    let i = 0
    while (i < r.length && r[i + 1]! <= start) i += 2
    if (i < r.length && r[i]! < end) {
      throw new ProtocolError(`${what} at request offset ${start}+${end - start} overlaps an earlier chunk`)
    }
    // Merge with neighbours that touch, so the common single-chunk case stays one pair.
    const joinsLeft = i > 0 && r[i - 1] === start
    const joinsRight = i < r.length && r[i] === end
    if (joinsLeft && joinsRight) {
      r[i - 1] = r[i + 1]!
      r.splice(i, 2)
    } else if (joinsLeft) {
      r[i - 1] = end
    } else if (joinsRight) {
      r[i] = start
    } else {
      r.splice(i, 0, start, end)
    }
  }
}
