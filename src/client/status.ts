/**
 * Status queries: BLOCK_STATUS as extents with offsets, the whole-range walk (map) that
 * `nbdinfo --map` and SEEK_DATA use, and the CACHE hint; all of them cover an export whose
 * size is not a whole number of blocks, whose tail no request may reach (it is reported
 * conservatively: as data, and dirty for a dirty bitmap, which is never wrong).
 */
import { InvalidArgumentError, NotSupportedError, ProtocolError } from '../errors.ts'
import { NBD_CMD, NBD_CMD_FLAG, NBD_FLAG, NBD_STATE_DIRTY } from '../protocol/constants.ts'
import { settle, type Geometry } from './geometry.ts'
import { bigPieces, checkRange, minBig, statusRange, trimExtents } from './shaping.ts'
import { MAX_EFFECT } from './writes.ts'

/** A run of bytes with one status: what blockStatus() and map() hand back. */
export interface Extent<O extends number | bigint = number> {
  readonly offset: O
  readonly length: number
  /** Status bits of the context (base:allocation: HOLE=1, ZERO=2). */
  readonly flags: number
}

/** Extents per meta context name, starting at the requested offset. */
export type BlockStatus<O extends number | bigint = number> = Map<string, Array<Extent<O>>>

export async function blockStatus (g: Geometry, start: bigint, length: number, reqOne: boolean, signal: AbortSignal | undefined): Promise<BlockStatus<bigint>> {
  checkRange(start, length, g.info.size)
  if (g.info.contexts.size === 0) throw new NotSupportedError('no meta context was negotiated, so BLOCK_STATUS is unavailable')
  if (length === 0) throw new InvalidArgumentError('blockStatus needs a length above 0')
  const r = statusRange(start, length, g.minBlockBig, g.info.size, MAX_EFFECT)
  const result: BlockStatus<bigint> = new Map()
  if (r.length === 0) {
    // Wholly in the unreachable tail.
    const tail = Math.min(length, Number(g.info.size - start))
    for (const name of g.info.contexts.values()) {
      result.set(name, [{ offset: start, length: tail, flags: name.startsWith('qemu:dirty-bitmap:') ? NBD_STATE_DIRTY : 0 }])
    }
    return result
  }
  const engine = g.pool.pick()
  const chunks = await engine.submit({ type: NBD_CMD.BLOCK_STATUS, flags: reqOne ? NBD_CMD_FLAG.REQ_ONE : 0, offset: r.first, length: r.length }, signal)
  for (const chunk of chunks ?? []) {
    const name = engine.contexts.get(chunk.contextId)
    if (name === undefined) throw new ProtocolError(`meta context id ${chunk.contextId} is unknown`)
    let at = start
    result.set(name, trimExtents(chunk, r.skip, Math.min(length, r.length - r.skip)).map((e) => {
      const extent = { offset: at, length: e.length, flags: e.flags }
      at += BigInt(e.length)
      return extent
    }))
  }
  return result
}

/** The extents of [start, end) for `context`, neighbours with the same flags merged. */
export async function * walk (g: Geometry, start: bigint, end: bigint, context: string, signal: AbortSignal | undefined): AsyncGenerator<Extent<bigint>> {
  if (![...g.info.contexts.values()].includes(context)) {
    throw new NotSupportedError(`meta context "${context}" was not negotiated (have: ${[...g.info.contexts.values()].join(', ') || 'none'})`)
  }
  if (end > g.info.size) throw new InvalidArgumentError('map range runs past the end of the export')
  let at = start
  let pending: Extent<bigint> | undefined
  while (at < end) {
    const status = await blockStatus(g, at, Number(minBig(end - at, BigInt(MAX_EFFECT))), false, signal)
    const extents = status.get(context) ?? []
    if (extents.length === 0) throw new ProtocolError(`no extents for ${context} at offset ${at}`)
    for (const e of extents) {
      if (pending !== undefined && pending.flags === e.flags && pending.length + e.length <= Number.MAX_SAFE_INTEGER) {
        pending = { offset: pending.offset, length: pending.length + e.length, flags: e.flags }
      } else {
        if (pending !== undefined) yield pending
        pending = e
      }
      at += BigInt(e.length)
    }
  }
  if (pending !== undefined) yield pending
}

/** Prefetch hint, widened to whole blocks (an unaligned export tail is skipped). */
export async function cache (g: Geometry, start: bigint, length: number, signal: AbortSignal | undefined): Promise<void> {
  checkRange(start, length, g.info.size)
  if (!g.can(NBD_FLAG.SEND_CACHE)) throw new NotSupportedError('the server does not support CACHE')
  if (length === 0) return
  const r = statusRange(start, length, g.minBlockBig, g.info.size, Number.MAX_SAFE_INTEGER)
  if (r.length === 0) return
  await settle(bigPieces(r.first, r.first + BigInt(r.length), MAX_EFFECT).map(([at, n]) =>
    g.pool.pick().submit({ type: NBD_CMD.CACHE, flags: 0, offset: at, length: n }, signal)))
}
