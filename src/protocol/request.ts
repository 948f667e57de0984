/**
 * Transmission requests (spec §"Request message"; extended headers branch).
 *
 *   compact  (28): 4 0x25609513 | 2 flags | 2 type | 8 cookie | 8 offset | 4 length
 *   extended (32): 4 0x21e41c71 | 2 flags | 2 type | 8 cookie | 8 offset | 8 length
 *
 * WRITE's payload follows the header; with extended headers its length is a payload length
 * and NBD_CMD_FLAG_PAYLOAD_LEN says so. The caller writes header and payload in one corked
 * writev; nothing here copies a payload.
 */
import {
  NBD_EXTENDED_REQUEST_HEADER, NBD_EXTENDED_REQUEST_MAGIC, NBD_REQUEST_HEADER, NBD_REQUEST_MAGIC
} from './constants.ts'

const TWO_32 = 0x1_0000_0000

export function requestHeaderSize (extended: boolean): number {
  return extended ? NBD_EXTENDED_REQUEST_HEADER : NBD_REQUEST_HEADER
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER)

/**
 * Writes a request header at the start of `target` (which must be large enough).
 * `cookie` is a non-negative safe integer, written as two 32-bit halves: that is several
 * times cheaper than going through BigInt on every request.
 */
export function encodeRequest (
  target: Buffer,
  flags: number,
  type: number,
  cookie: number,
  offset: bigint,
  length: number,
  extended: boolean
): void {
  target.writeUInt32BE(extended ? NBD_EXTENDED_REQUEST_MAGIC : NBD_REQUEST_MAGIC, 0)
  target.writeUInt16BE(flags, 4)
  target.writeUInt16BE(type, 6)
  target.writeUInt32BE(Math.floor(cookie / TWO_32), 8)
  target.writeUInt32BE(cookie >>> 0, 12)
  if (offset < MAX_SAFE) {
    // Offsets below 2^53 (every export up to 8 PiB) go as two numbers: no BigInt is made.
    const n = Number(offset)
    target.writeUInt32BE(Math.floor(n / TWO_32), 16)
    target.writeUInt32BE(n >>> 0, 20)
  } else {
    target.writeBigUInt64BE(offset, 16)
  }
  if (extended) {
    target.writeUInt32BE(Math.floor(length / TWO_32), 24)
    target.writeUInt32BE(length >>> 0, 28)
  } else {
    target.writeUInt32BE(length, 24)
  }
}
