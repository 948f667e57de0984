/**
 * Request shaping, pure: how a byte-granular request becomes requests the server accepts.
 * No engines, no promises; unit-tested on its own (test/client/shaping.test.ts).
 *
 *   export      [block][block][block][block][block][tail)     tail: size % minimum block
 *   request          [·····················)                  any offset and length
 *   widened     [=========================)                   whole blocks: `head` bytes
 *                                                             before, up to `end`
 *   read-modify-write: the partial first and last blocks are read, patched and written
 *   back; whole blocks in between go out as they are (or as WRITE_ZEROES)
 *
 *        edge        middle (written as it is)        edge
 *   [··[=====]][=============================][[====]···]
 */
import { InvalidArgumentError } from '../errors.ts'
import type { Extent, StatusChunk } from '../protocol/block-status.ts'

export type Offset = number | bigint

export const alignDown = (x: bigint, a: bigint): bigint => x - (x % a)
export const alignUp = (x: bigint, a: bigint): bigint => alignDown(x + a - 1n, a)
export const minBig = (a: bigint, b: bigint): bigint => (a < b ? a : b)

/** An offset from a caller: a non-negative safe integer or a bigint. */
export function toBig (offset: Offset): bigint {
  if (typeof offset === 'bigint') {
    if (offset < 0n) throw new InvalidArgumentError(`offset ${offset} is negative`)
    return offset
  }
  if (!Number.isSafeInteger(offset) || offset < 0) throw new InvalidArgumentError(`offset ${offset} is not a non-negative integer`)
  return BigInt(offset)
}

/** A length from a caller: a non-negative safe integer (a bigint that fits is accepted). */
export function toLength (length: number | bigint): number {
  const n = typeof length === 'bigint' ? Number(length) : length
  if (!Number.isSafeInteger(n) || n < 0 || (typeof length === 'bigint' && BigInt(n) !== length)) {
    throw new InvalidArgumentError(`length ${length} is not a non-negative integer`)
  }
  return n
}

/** Checks that [start, start+length) lies inside an export of `size` bytes. */
export function checkRange (start: bigint, length: number, size: bigint): void {
  if (start + BigInt(length) > size) {
    throw new InvalidArgumentError(`range ${start}+${length} runs past the end of the export (${size} bytes)`)
  }
}

export interface Widened {
  /** Bytes between the first whole block and the request. */
  readonly head: number
  /** The first whole block's offset. */
  readonly first: bigint
  /** The end of the last whole block. */
  readonly end: bigint
}

/** Widens [start, start+length) to whole blocks of `block` bytes. */
export function widen (start: bigint, length: number, block: bigint, size: bigint): Widened {
  const stop = start + BigInt(length)
  if (block === 1n) return { head: 0, first: start, end: stop }
  const head = Number(start % block)
  const end = alignUp(stop, block)
  if (end > size) {
    throw new InvalidArgumentError(`the export's last ${size % block} bytes are not a whole block of ${block} and cannot be reached`)
  }
  return { head, first: start - BigInt(head), end }
}

/** [at, n] pieces of at most `size` bytes covering [0, total). */
export function pieces (total: number, size: number): Array<[number, number]> {
  const out: Array<[number, number]> = []
  for (let at = 0; at < total; at += size) out.push([at, Math.min(size, total - at)])
  return out
}

/** [offset, length] pieces of at most `size` bytes covering [first, last). */
export function bigPieces (first: bigint, last: bigint, size: number): Array<[bigint, number]> {
  const out: Array<[bigint, number]> = []
  const step = BigInt(size)
  for (let at = first; at < last; at += step) out.push([at, Number(minBig(step, last - at))])
  return out
}

export interface RmwPlan {
  /** Offsets (relative to the first whole block) of the partial blocks to read and patch. */
  readonly edges: number[]
  /** The whole blocks in between, relative to the first whole block: [start, end). */
  readonly middle: readonly [number, number]
  /** Bytes from the first whole block to the end of the last. */
  readonly total: number
}

/**
 * What a read-modify-write of [start, start+length) touches, given its widening (`head`
 * bytes before the request, up to `end`, from `first`).
 */
export function planReadModifyWrite (length: number, widened: Widened, block: number): RmwPlan {
  const total = Number(widened.end - widened.first)
  const tail = total - widened.head - length
  const firstPartial = widened.head > 0 || total === block
  const lastPartial = total > block && tail > 0
  const edges: number[] = []
  if (firstPartial) edges.push(0)
  if (lastPartial) edges.push(total - block)
  return { edges, middle: [firstPartial ? block : 0, lastPartial ? total - block : total], total }
}

/**
 * Patches the edge block read at `at` (relative to the first whole block) with the caller's
 * bytes (`data`, which starts `head` bytes in), or with zeroes when `data` is null.
 */
export function patchEdge (edge: Buffer, at: number, head: number, length: number, data: Uint8Array | null): void {
  const from = Math.max(head, at)
  const to = Math.min(head + length, at + edge.length)
  if (to <= from) return
  if (data === null) edge.fill(0, from - at, to - at)
  else edge.set(data.subarray(from - head, to - head), from - at)
}

export interface StatusRange {
  /** The aligned request to send: [first, first + length). */
  readonly first: bigint
  readonly length: number
  /** Bytes of the first block before the caller's offset. */
  readonly skip: number
}

/**
 * The BLOCK_STATUS (or CACHE) request for [start, start+length): widened to whole blocks,
 * at most `max` bytes, and never into an export tail that is not a whole block (a request
 * there would break the server's block size rules). When the caller's range lies wholly in
 * that tail, `length` is 0: nothing can be asked, and the tail is reported conservatively.
 */
export function statusRange (start: bigint, length: number, block: bigint, size: bigint, max: number): StatusRange {
  const first = alignDown(start, block)
  const skip = Number(start - first)
  const reachable = alignDown(size, block)
  let end = alignUp(start + BigInt(length), block)
  if (end > reachable) end = reachable
  const want = end > first ? Number(end - first) : 0
  return { first, length: Math.min(want, max - (max % Number(block))), skip }
}

/** Drops the first `skip` bytes of a status chunk and keeps at most `length` bytes. */
export function trimExtents (chunk: StatusChunk, skip: number, length: number): Extent[] {
  const out: Extent[] = []
  let at = 0
  for (const e of chunk.extents) {
    const from = Math.max(at, skip)
    const to = Math.min(at + e.length, skip + length)
    if (to > from) out.push({ length: to - from, flags: e.flags })
    at += e.length
    if (at >= skip + length) break
  }
  return out
}
