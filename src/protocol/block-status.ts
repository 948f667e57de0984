/**
 * BLOCK_STATUS payloads (spec §"NBD_REPLY_TYPE_BLOCK_STATUS", strict-client rule 20).
 *
 * Descriptors are consecutive from the request's offset. Every length is nonzero; the first
 * N-1 must end inside the request; the last may run past it and is clamped here. With
 * REQ_ONE there is exactly one descriptor, no longer than the request.
 */
import { ProtocolError } from '../errors.ts'

export interface Extent {
  /** Bytes, clamped to the request. */
  readonly length: number
  /** Status bits of the context (base:allocation: HOLE=1, ZERO=2). Unknown bits pass through. */
  readonly flags: number
}

export interface StatusChunk {
  readonly contextId: number
  readonly extents: Extent[]
}

const TWO_32 = 0x1_0000_0000

export function parseBlockStatus (payload: Buffer, extended: boolean, requestLength: number, reqOne: boolean): StatusChunk {
  const contextId = payload.readUInt32BE(0)
  const first = extended ? 8 : 4
  const size = extended ? 16 : 8
  const count = (payload.length - first) / size
  if (extended && payload.readUInt32BE(4) !== count) {
    throw new ProtocolError(`BLOCK_STATUS_EXT says ${payload.readUInt32BE(4)} descriptors but carries ${count}`)
  }
  if (reqOne && count !== 1) throw new ProtocolError(`BLOCK_STATUS with REQ_ONE answered with ${count} extents`)
  const extents: Extent[] = new Array(count)
  let covered = 0
  for (let i = 0, at = first; i < count; i++, at += size) {
    let length: number
    let flags: number
    if (extended) {
      const high = payload.readUInt32BE(at)
      length = high * TWO_32 + payload.readUInt32BE(at + 4)
      if (payload.readUInt32BE(at + 8) !== 0) {
        // Every context defined so far (base:, qemu:) is 32-bit; their high half MUST be 0.
        throw new ProtocolError('BLOCK_STATUS_EXT status with high 32 bits set for a 32-bit context')
      }
      flags = payload.readUInt32BE(at + 12)
    } else {
      length = payload.readUInt32BE(at)
      flags = payload.readUInt32BE(at + 4)
    }
    if (length === 0) throw new ProtocolError('BLOCK_STATUS extent of length 0')
    if (covered >= requestLength) throw new ProtocolError('BLOCK_STATUS extents continue past the end of the request')
    if (reqOne && length > requestLength) throw new ProtocolError('BLOCK_STATUS with REQ_ONE returned an extent longer than the request')
    // The last extent may run past the request; hand up only what was asked about.
    const clamped = Math.min(length, requestLength - covered)
    covered += clamped
    extents[i] = { length: clamped, flags }
  }
  return { contextId, extents }
}
