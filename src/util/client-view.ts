/**
 * The few NbdClient calls whose shapes are changing (the size as a number, map()'s arguments and
 * extent shape, the state event's connection number, connectionInfo()'s entries), in one place
 * for streams, copy and the daemon: when the client's API moves, only this file does.
 *
 *   exportSize(client)            the size as a number (exact: refuses an export past 2^53)
 *   allocation(client, o, n, s)   base:allocation extents of [o, o+n) with number offsets
 *   onConnectionChange(client, f) each connection's state changes, connections counted from 1
 *   connectionTable(client)       per connection, for `show mount FILE connections`
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

/** A connection's state change; `connection` counts from 1, as connectionInfo() does. */
export interface ConnectionChange {
  readonly connection: number
  readonly from: string
  readonly to: string
  readonly reason: string
}

/**
 * Calls `listener` on every connection's state change; returns what stops it. (Today's event
 * counts connections from 0; the engine rewrite makes it 1-based: drop the `+ 1` then.)
 */
export function onConnectionChange (client: NbdClient, listener: (change: ConnectionChange) => void): () => void {
  const handler = (c: { connection: number, from: string, to: string, reason: string }): void => {
    listener({ connection: c.connection + 1, from: c.from, to: c.to, reason: c.reason })
  }
  client.on('state', handler)
  return () => { client.off('state', handler) }
}

/** Per connection, as `show mount FILE connections` shows it (with `tls` once the client reports it). */
export function connectionTable (client: NbdClient): ReadonlyArray<Record<string, unknown>> {
  return client.connectionInfo()
}
