/**
 * NBD_OPT_INFO / NBD_OPT_GO data and the NBD_REP_INFO replies (spec §"NBD_OPT_INFO").
 *
 *   C: 4 name length | name | 2 n | n × 2 info type
 *   S: NBD_REP_INFO: 2 info type | payload
 *        NBD_INFO_EXPORT      (12 bytes in all)  8 size | 2 transmission flags
 *        NBD_INFO_NAME        (≥ 2)              canonical name
 *        NBD_INFO_DESCRIPTION (≥ 2)              description
 *        NBD_INFO_BLOCK_SIZE  (14)               4 minimum | 4 preferred | 4 maximum payload
 */
import { ProtocolError } from '../errors.ts'
import { NBD_INFO } from './constants.ts'
import { decodeString, encodeString } from './strings.ts'

export function encodeInfoRequest (exportName: string, infoTypes: readonly number[]): Buffer {
  if (new Set(infoTypes).size !== infoTypes.length) {
    // The spec forbids listing an info request twice.
    throw new Error('internal: duplicate NBD_INFO request')
  }
  const name = encodeString(exportName, 'export name')
  const out = Buffer.allocUnsafe(4 + name.length + 2 + 2 * infoTypes.length)
  out.writeUInt32BE(name.length, 0)
  out.set(name, 4)
  out.writeUInt16BE(infoTypes.length, 4 + name.length)
  infoTypes.forEach((type, i) => out.writeUInt16BE(type, 4 + name.length + 2 + 2 * i))
  return out
}

export interface BlockSizeConstraints {
  readonly minimum: number
  readonly preferred: number
  readonly maximum: number
}

export type InfoReply =
  | { readonly type: 'export', readonly size: bigint, readonly flags: number }
  | { readonly type: 'name', readonly name: string }
  | { readonly type: 'description', readonly description: string }
  | { readonly type: 'block-size', readonly blockSize: BlockSizeConstraints }
  | { readonly type: 'unknown', readonly infoType: number }

export function parseInfoReply (payload: Buffer): InfoReply {
  if (payload.length < 2) throw new ProtocolError(`NBD_REP_INFO of ${payload.length} bytes is too short to hold its type`)
  const infoType = payload.readUInt16BE(0)
  switch (infoType) {
    case NBD_INFO.EXPORT:
      if (payload.length !== 12) throw new ProtocolError(`NBD_INFO_EXPORT is ${payload.length} bytes, must be 12`)
      return { type: 'export', size: payload.readBigUInt64BE(2), flags: payload.readUInt16BE(10) }
    case NBD_INFO.NAME:
      return { type: 'name', name: decodeString(payload.subarray(2), 'NBD_INFO_NAME') }
    case NBD_INFO.DESCRIPTION:
      return { type: 'description', description: decodeString(payload.subarray(2), 'NBD_INFO_DESCRIPTION') }
    case NBD_INFO.BLOCK_SIZE: {
      if (payload.length !== 14) throw new ProtocolError(`NBD_INFO_BLOCK_SIZE is ${payload.length} bytes, must be 14`)
      const blockSize = {
        minimum: payload.readUInt32BE(2),
        preferred: payload.readUInt32BE(6),
        maximum: payload.readUInt32BE(10)
      }
      const problem = checkBlockSize(blockSize)
      if (problem !== undefined) throw new ProtocolError(`invalid NBD_INFO_BLOCK_SIZE ${blockSize.minimum}/${blockSize.preferred}/${blockSize.maximum}: ${problem}`)
      return { type: 'block-size', blockSize }
    }
    default:
      // Unknown info types MUST be ignored.
      return { type: 'unknown', infoType }
  }
}

const isPowerOfTwo = (n: number): boolean => n > 0 && (n & (n - 1)) === 0

/** The spec's validity rules for block size constraints; returns what is wrong, if anything. */
export function checkBlockSize ({ minimum, preferred, maximum }: BlockSizeConstraints): string | undefined {
  if (!isPowerOfTwo(minimum) || minimum > 65536) return 'minimum must be a power of 2 no larger than 64 KiB'
  if (!isPowerOfTwo(preferred) || preferred < Math.max(minimum, 512)) return 'preferred must be a power of 2 of at least max(minimum, 512)'
  if (maximum < preferred) return 'maximum payload must be at least the preferred size'
  if (maximum !== 0xffffffff && maximum % minimum !== 0) return 'maximum payload must be a multiple of the minimum'
  return undefined
}
