/**
 * What every request of a client is shaped by, fixed by its first connection: the export's
 * size and flags, the alignment the server requires, the largest payload, and where requests
 * go (the engines, the ordering of writes).
 */
import { NotSupportedError, OffsetRangeError } from '../errors.ts'
import { NBD_CMD_FLAG, NBD_FLAG } from '../protocol/constants.ts'
import type { ExportInfo } from '../connector/export-info.ts'
import type { Ordering } from './ordering.ts'
import type { EnginePool } from './pool.ts'

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER)

export class Geometry {
  readonly info: ExportInfo
  readonly pool: EnginePool
  readonly ordering: Ordering
  /** Alignment the server requires (its minimum block size, else 1). */
  readonly minBlock: number
  readonly minBlockBig: bigint
  /** Largest READ/WRITE payload we send: a multiple of minBlock. */
  readonly maxPayload: number
  /** The size as a number when it is one exactly (fast range checks); else -1. */
  readonly sizeNumber: number

  constructor (info: ExportInfo, pool: EnginePool, ordering: Ordering, maxRequestSize: number) {
    this.info = info
    this.pool = pool
    this.ordering = ordering
    this.minBlock = info.blockSize?.minimum ?? 1
    this.minBlockBig = BigInt(this.minBlock)
    const max = Math.min(maxRequestSize, info.blockSize?.maximum ?? 0xffffffff)
    this.maxPayload = Math.max(this.minBlock, max - (max % this.minBlock))
    this.sizeNumber = info.size <= MAX_SAFE ? Number(info.size) : -1
  }

  can (flag: number): boolean {
    return (this.info.flags & flag) !== 0
  }

  checkWritable (): void {
    if (this.can(NBD_FLAG.READ_ONLY)) throw new NotSupportedError('the export is read-only')
  }

  /** NBD_CMD_FLAG_FUA when asked for and offered (else FUA is emulated with a FLUSH). */
  fuaFlag (fua: boolean | undefined): number {
    return fua === true && this.can(NBD_FLAG.SEND_FUA) ? NBD_CMD_FLAG.FUA : 0
  }
}

/** An offset we hand back, as a number: exact, or an error that says to ask for a bigint. */
export function toNumber (offset: bigint): number {
  if (offset > MAX_SAFE) throw new OffsetRangeError(`offset ${offset} is past what a number holds exactly: ask for { bigint: true }`)
  return Number(offset)
}

/** Waits for every promise, then throws the first failure: the caller's buffers are free once it settles. */
export async function settle (work: ReadonlyArray<Promise<unknown>>): Promise<void> {
  if (work.length === 1) {
    await work[0]
    return
  }
  const results = await Promise.allSettled(work)
  for (const r of results) if (r.status === 'rejected') throw r.reason
}
