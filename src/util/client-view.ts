/**
 * The few NbdClient calls whose shapes are changing (the size as a number, map()'s arguments and
 * extent shape), in one place for streams and copy: when the client's API moves, only this file
 * does.
 *
 *   exportSize(client)            the size as a number (exact: refuses an export past 2^53)
 *   allocation(client, o, n, s)   base:allocation extents of [o, o+n) with number offsets
 */
import type { NbdClient } from '../client/nbd-client.ts'
import { InvalidArgumentError } from '../errors.ts'

/** base:allocation's bits (NBD_STATE_HOLE, NBD_STATE_ZERO). */
export const STATE_HOLE = 1
export const STATE_ZERO = 2

export interface AllocationExtent {
  readonly offset: number
  readonly length: number
  /** base:allocation flags: HOLE = 1, ZERO = 2. Only ZERO says the bytes read as zeroes. */
  readonly flags: number
}

export function exportSize (client: NbdClient): number {
  const size = client.sizeBigInt
  if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw new InvalidArgumentError(`the export's size (${size} bytes) is past 2^53`)
  return Number(size)
}

/** Whether allocation() can work: base:allocation was negotiated. */
export function hasAllocation (client: NbdClient): boolean {
  return client.canBlockStatus && client.metaContexts.includes('base:allocation')
}

/** The base:allocation extents of [offset, offset + length), merged, in order. */
export async function * allocation (client: NbdClient, offset: number, length: number, signal?: AbortSignal): AsyncGenerator<AllocationExtent> {
  for await (const e of client.map(offset, length, { context: 'base:allocation', ...(signal !== undefined && { signal }) })) yield e
}
