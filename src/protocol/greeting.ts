/**
 * The server's greeting and our client flags (spec §"Handshake").
 *
 *   S: 8  "NBDMAGIC"                      0x4e42444d41474943
 *   S: 8  "IHAVEOPT" (newstyle)           0x49484156454f5054
 *        | cliserv magic (oldstyle)       0x00420281861253
 *   S: 2  handshake flags                 (newstyle only)
 *   C: 4  client flags                    (newstyle only)
 */
import { ProtocolError } from '../errors.ts'
import {
  NBD_CLISERV_MAGIC, NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES, NBD_INIT_MAGIC, NBD_OPTS_MAGIC
} from './constants.ts'

export type GreetingStyle = 'newstyle' | 'oldstyle'

/** Reads the first 16 bytes and says which greeting follows. */
export function parseGreetingPrefix (prefix: Buffer): GreetingStyle {
  const init = prefix.readBigUInt64BE(0)
  if (init !== NBD_INIT_MAGIC) {
    throw new ProtocolError(`not an NBD server: greeting starts 0x${init.toString(16).padStart(16, '0')}, expected "NBDMAGIC"`)
  }
  const second = prefix.readBigUInt64BE(8)
  if (second === NBD_OPTS_MAGIC) return 'newstyle'
  if (second === NBD_CLISERV_MAGIC) return 'oldstyle'
  throw new ProtocolError(`unknown NBD greeting magic 0x${second.toString(16)} (neither newstyle "IHAVEOPT" nor oldstyle)`)
}

export interface HandshakeFlags {
  /** The server speaks fixed newstyle: options get replies, and everything past EXPORT_NAME is possible. */
  readonly fixedNewstyle: boolean
  /** The server can omit the 124 zero bytes after an EXPORT_NAME reply. */
  readonly noZeroes: boolean
  /** The raw 16-bit field, unknown bits included (reported, never echoed). */
  readonly raw: number
}

export function parseHandshakeFlags (raw: number): HandshakeFlags {
  // Unknown bits are ignored: new capabilities are negotiated as options, not here, because
  // this field is not protected against a man in the middle.
  return {
    fixedNewstyle: (raw & NBD_FLAG_FIXED_NEWSTYLE) !== 0,
    noZeroes: (raw & NBD_FLAG_NO_ZEROES) !== 0,
    raw
  }
}

/** Our client flags: only the bits we know, and only those the server offered. */
export function encodeClientFlags (server: HandshakeFlags): Buffer {
  let flags = 0
  if (server.fixedNewstyle) flags |= NBD_FLAG_C_FIXED_NEWSTYLE
  if (server.noZeroes) flags |= NBD_FLAG_C_NO_ZEROES
  const out = Buffer.alloc(4)
  out.writeUInt32BE(flags, 0)
  return out
}
