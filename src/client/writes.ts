/**
 * Writes of any offset and length, made right for the server's block size and what it
 * offers, and what each kind promises about the contents afterwards:
 *
 *   write        the bytes; unaligned edges by read-modify-write under the range lock
 *   writeZeroes  zeroes (noHole: and allocated, fallocate's ZERO_RANGE): WRITE_ZEROES, else
 *                written zero buffers; unaligned edges by read-modify-write
 *   punchHole    zeroes, deallocated where the server can (fallocate's PUNCH_HOLE): never TRIM,
 *                which promises nothing
 *   trim         a hint; only whole blocks inside the range
 *
 * Every write-like request goes through Ordering, so it keeps its place against overlapping
 * writes and FLUSH for its whole life on the wire.
 */
import { NotSupportedError } from '../errors.ts'
import { NBD_CMD, NBD_CMD_FLAG, NBD_FLAG } from '../protocol/constants.ts'
import type { Command } from './engine/request.ts'
import type { HeldRange } from './range-lock.ts'
import { settle, type Geometry } from './geometry.ts'
import { alignDown, alignUp, bigPieces, checkRange, patchEdge, pieces, planReadModifyWrite, widen } from './shaping.ts'

/** Trims and zeroes are split at this size (a power of two, so always aligned). */
export const MAX_EFFECT = 1 << 30

export interface WriteFlags {
  readonly fua?: boolean | undefined
  readonly signal?: AbortSignal | undefined
}

export interface ZeroFlags extends WriteFlags {
  readonly noHole?: boolean | undefined
  readonly fastZero?: boolean | undefined
}

/**
 * The writes of one read-modify-write: its range lock is released once the RMW itself and
 * every write it sent are done on the wire.
 */
class RmwScope {
  #count = 1
  readonly range: HeldRange
  readonly #release: () => void
  constructor (range: HeldRange, release: () => void) {
    this.range = range
    this.#release = release
  }

  enter (): void { this.#count++ }
  readonly leave = (): void => { if (--this.#count === 0) this.#release() }
}

export class Writes {
  readonly #g: Geometry
  /** FUA emulation: a FLUSH (the client's, which is a barrier). */
  readonly #flush: (signal: AbortSignal | undefined) => Promise<void>
  #zeroes: Buffer | undefined

  constructor (geometry: Geometry, flush: (signal: AbortSignal | undefined) => Promise<void>) {
    this.#g = geometry
    this.#flush = flush
  }

  async write (data: Uint8Array, start: bigint, options: WriteFlags): Promise<void> {
    const g = this.#g
    checkRange(start, data.length, g.info.size)
    g.checkWritable()
    if (data.length === 0) return
    const flags = g.fuaFlag(options.fua)
    const w = widen(start, data.length, g.minBlockBig, g.info.size)
    if (w.head === 0 && w.end === start + BigInt(data.length)) await this.#writeAligned(data, start, flags, options.signal)
    else await this.#readModifyWrite(start, data, data.length, flags, options.signal)
    if (options.fua === true && flags === 0) await this.#emulateFua(options.signal)
  }

  async writeZeroes (start: bigint, length: number, options: ZeroFlags): Promise<void> {
    const g = this.#g
    checkRange(start, length, g.info.size)
    g.checkWritable()
    if (options.fastZero === true && !g.can(NBD_FLAG.SEND_FAST_ZERO)) throw new NotSupportedError('the server does not support fast zeroing')
    if (length === 0) return
    let flags = g.fuaFlag(options.fua)
    if (options.noHole === true) flags |= NBD_CMD_FLAG.NO_HOLE
    if (options.fastZero === true) flags |= NBD_CMD_FLAG.FAST_ZERO
    const w = widen(start, length, g.minBlockBig, g.info.size)
    if (w.head === 0 && w.end === start + BigInt(length)) await this.#zeroAligned(start, length, flags, options.signal)
    else await this.#readModifyWrite(start, null, length, flags, options.signal)
    if (options.fua === true && (flags & NBD_CMD_FLAG.FUA) === 0) await this.#emulateFua(options.signal)
  }

  async trim (start: bigint, length: number, options: WriteFlags): Promise<void> {
    const g = this.#g
    checkRange(start, length, g.info.size)
    g.checkWritable()
    if (!g.can(NBD_FLAG.SEND_TRIM)) throw new NotSupportedError('the server does not support TRIM')
    const first = alignUp(start, g.minBlockBig)
    const last = alignDown(start + BigInt(length), g.minBlockBig)
    if (last <= first) return
    const flags = g.fuaFlag(options.fua)
    await settle(bigPieces(first, last, MAX_EFFECT).map(([at, n]) => this.#send({ type: NBD_CMD.TRIM, flags, offset: at, length: n }, options.signal)))
    if (options.fua === true && flags === 0) await this.#emulateFua(options.signal)
  }

  #writeAligned (data: Uint8Array, offset: bigint, flags: number, signal: AbortSignal | undefined, scope?: RmwScope): Promise<void> {
    return settle(pieces(data.length, this.#g.maxPayload).map(([at, n]) =>
      this.#send({ type: NBD_CMD.WRITE, flags, offset: offset + BigInt(at), length: n, payload: data.subarray(at, at + n) }, signal, scope)))
  }

  #zeroAligned (offset: bigint, length: number, flags: number, signal: AbortSignal | undefined, scope?: RmwScope): Promise<void> {
    const g = this.#g
    if (g.can(NBD_FLAG.SEND_WRITE_ZEROES)) {
      return settle(bigPieces(offset, offset + BigInt(length), MAX_EFFECT).map(([at, n]) =>
        this.#send({ type: NBD_CMD.WRITE_ZEROES, flags, offset: at, length: n }, signal, scope)))
    }
    // No WRITE_ZEROES: write zero buffers, one shared buffer for every piece.
    this.#zeroes ??= Buffer.alloc(Math.min(g.maxPayload, 1024 * 1024))
    const zeroes = this.#zeroes
    return settle(pieces(length, zeroes.length).map(([at, n]) =>
      this.#send({ type: NBD_CMD.WRITE, flags: flags & NBD_CMD_FLAG.FUA, offset: offset + BigInt(at), length: n, payload: zeroes.subarray(0, n) }, signal, scope)))
  }

  #send (command: Command, signal: AbortSignal | undefined, scope?: RmwScope): Promise<void> {
    const g = this.#g
    if (scope === undefined) return g.ordering.write(g.pool.pick(), command, signal)
    scope.enter()
    return g.ordering.write(g.pool.pick(), command, signal, { range: scope.range, done: scope.leave })
  }

  /**
   * Unaligned write (or zero): under an exclusive lock of the widened range, the partial
   * first and last blocks are read, patched and written back; whole blocks in between go out
   * as they are (or as WRITE_ZEROES). The lock is held until every write it sent is done on
   * the wire, even when the caller is answered earlier.
   */
  async #readModifyWrite (start: bigint, data: Uint8Array | null, length: number, flags: number, signal: AbortSignal | undefined): Promise<void> {
    const g = this.#g
    const w = widen(start, length, g.minBlockBig, g.info.size)
    const plan = planReadModifyWrite(length, w, g.minBlock)
    const range = await g.ordering.ranges.acquire(w.first, Number(w.end - w.first), signal)
    const scope = new RmwScope(range, () => { g.ordering.ranges.release(range) })
    try {
      const edges = plan.edges.map((at) => ({ at, block: Buffer.allocUnsafe(g.minBlock) }))
      await settle(edges.map((e) => g.pool.pick().submit({ type: NBD_CMD.READ, flags: 0, offset: w.first + BigInt(e.at), length: g.minBlock, dest: e.block }, signal)))
      for (const e of edges) patchEdge(e.block, e.at, w.head, length, data)
      const dataFlags = flags & NBD_CMD_FLAG.FUA
      const work = edges.map((e) => this.#writeAligned(e.block, w.first + BigInt(e.at), dataFlags, signal, scope))
      const [from, to] = plan.middle
      if (to > from) {
        const offset = w.first + BigInt(from)
        work.push(data === null
          ? this.#zeroAligned(offset, to - from, flags, signal, scope)
          : this.#writeAligned(data.subarray(from - w.head, to - w.head), offset, dataFlags, signal, scope))
      }
      await settle(work)
    } finally {
      scope.leave()
    }
  }

  async #emulateFua (signal: AbortSignal | undefined): Promise<void> {
    // Without SEND_FLUSH the server has no volatile cache: an acked write is already durable.
    if (this.#g.can(NBD_FLAG.SEND_FLUSH)) await this.#flush(signal)
  }
}
