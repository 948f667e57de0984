/**
 * The planner: turns the source's extents into the pieces a copy (or a read stream) works on.
 *
 *   extents   |  data 3 MiB            | zero 5 MiB      | data 1 MiB |
 *   pieces    | 1M  | 1M  | 1M         | zero 5 MiB       | 1M         |    (size = 1 MiB)
 *
 * Data is cut into pieces of at most `size`, aligned to multiples of `size` (so requests stay
 * aligned for the server when an extent starts mid-block); zero runs are one piece each, at
 * most MAX_ZERO, whatever flags told us they read as zeroes. Without extents (no
 * BLOCK_STATUS, a file, --no-extents) everything is data and zero detection finds the rest.
 */
import type { Extent } from '../client/index.ts'
import { NBD_STATE_ZERO } from '../protocol/constants.ts'

export interface Piece {
  readonly offset: number
  readonly length: number
  /** The source says this reads as zeroes: nothing to read. */
  readonly zero: boolean
}

/** Zero pieces are split here, so progress moves and no single request grows huge. */
export const MAX_ZERO = 1 << 30

/** Pieces of [start, end): from `extents` (in order, covering the range) or all data. */
export async function * planPieces (extents: AsyncIterable<Extent> | undefined, start: number, end: number, size: number): AsyncGenerator<Piece> {
  if (extents === undefined) {
    yield * dataPieces(start, end, size)
    return
  }
  let zeroFrom = -1
  let at = start
  for await (const e of extents) {
    const from = Math.max(e.offset, start)
    const to = Math.min(e.offset + e.length, end)
    if (to <= from) continue
    if ((e.flags & NBD_STATE_ZERO) !== 0) {
      if (zeroFrom < 0) zeroFrom = from
    } else {
      if (zeroFrom >= 0) yield * zeroPieces(zeroFrom, from)
      zeroFrom = -1
      yield * dataPieces(from, to, size)
    }
    at = to
    if (at >= end) break
  }
  if (zeroFrom >= 0) yield * zeroPieces(zeroFrom, at)
  // Extents that stop short (a server may describe less): the rest is data.
  if (at < end) yield * dataPieces(at, end, size)
}

function * dataPieces (from: number, to: number, size: number): Generator<Piece> {
  let at = from
  while (at < to) {
    const next = Math.min(to, (Math.floor(at / size) + 1) * size)
    yield { offset: at, length: next - at, zero: false }
    at = next
  }
}

function * zeroPieces (from: number, to: number): Generator<Piece> {
  for (let at = from; at < to; at += MAX_ZERO) yield { offset: at, length: Math.min(MAX_ZERO, to - at), zero: true }
}
