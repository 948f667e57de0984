/**
 * Transmission replies (spec §"Simple reply message", §"Structured reply chunk message",
 * extended headers branch).
 *
 *   simple     (16): 4 0x67446698 | 4 error | 8 cookie                       (+ READ data)
 *   structured (20): 4 0x668e33ef | 2 flags | 2 type | 8 cookie | 4 length  (+ payload)
 *   extended   (32): 4 0x6e8a278c | 2 flags | 2 type | 8 cookie | 8 offset | 8 length
 *
 * Which styles may arrive depends on what was negotiated:
 *
 *   mode        simple  structured  extended
 *   simple        yes       -          -
 *   structured    yes      yes         -
 *   extended       -        -         yes
 */
import { ProtocolError } from '../errors.ts'
import {
  NBD_EXTENDED_REPLY_HEADER, NBD_EXTENDED_REPLY_MAGIC, NBD_SIMPLE_REPLY_HEADER, NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_HEADER, NBD_STRUCTURED_REPLY_MAGIC
} from './constants.ts'

export type ReplyMode = 'simple' | 'structured' | 'extended'

const TWO_32 = 0x1_0000_0000
/** Cookies we hand out are safe integers, so a high half above 2^21 cannot be one of ours. */
const MAX_COOKIE_HIGH = 0x1f_ffff

/** The header's size from its first four bytes, refusing a magic the mode does not allow. */
export function replyHeaderSize (magic: number, mode: ReplyMode): number {
  switch (magic) {
    case NBD_SIMPLE_REPLY_MAGIC:
      if (mode === 'extended') throw new ProtocolError('simple reply after extended headers were negotiated')
      return NBD_SIMPLE_REPLY_HEADER
    case NBD_STRUCTURED_REPLY_MAGIC:
      if (mode !== 'structured') throw new ProtocolError(`structured reply chunk, but the connection uses ${mode} replies`)
      return NBD_STRUCTURED_REPLY_HEADER
    case NBD_EXTENDED_REPLY_MAGIC:
      if (mode !== 'extended') throw new ProtocolError(`extended reply header, but the connection uses ${mode} replies`)
      return NBD_EXTENDED_REPLY_HEADER
    default:
      throw new ProtocolError(`bad reply magic 0x${(magic >>> 0).toString(16).padStart(8, '0')}: the stream is out of step`)
  }
}

/**
 * A parsed reply header. For a simple reply `simple` is true and `error` holds the error;
 * for a chunk, `flags`, `type` and `length` describe it, and `offset` is set with extended
 * headers. `cookie` is -1 when the wire value cannot be a cookie of ours.
 */
export interface ReplyHeader {
  simple: boolean
  error: number
  flags: number
  type: number
  cookie: number
  offset: bigint | undefined
  length: number
}

function readCookie (buf: Buffer, at: number): number {
  const high = buf.readUInt32BE(at)
  if (high > MAX_COOKIE_HIGH) return -1
  return high * TWO_32 + buf.readUInt32BE(at + 4)
}

/** Parses a complete header whose size `replyHeaderSize` gave. */
export function parseReplyHeader (buf: Buffer): ReplyHeader {
  return parseReplyHeaderInto({ simple: false, error: 0, flags: 0, type: 0, cookie: 0, offset: undefined, length: 0 }, buf, 0)
}

/**
 * The same, into `into` and from `buf` at `at`: the engine reads every header into one object
 * of its own, straight from the socket's buffer (nothing allocated per reply).
 */
export function parseReplyHeaderInto (into: ReplyHeader, buf: Buffer, at: number): ReplyHeader {
  const magic = buf.readUInt32BE(at)
  into.offset = undefined
  if (magic === NBD_SIMPLE_REPLY_MAGIC) {
    into.simple = true
    into.error = buf.readUInt32BE(at + 4)
    into.flags = 0
    into.type = 0
    into.cookie = readCookie(buf, at + 8)
    into.length = 0
    return into
  }
  into.simple = false
  into.error = 0
  into.flags = buf.readUInt16BE(at + 4)
  into.type = buf.readUInt16BE(at + 6)
  into.cookie = readCookie(buf, at + 8)
  if (magic === NBD_STRUCTURED_REPLY_MAGIC) {
    into.length = buf.readUInt32BE(at + 16)
    return into
  }
  const lengthHigh = buf.readUInt32BE(at + 24)
  if (lengthHigh !== 0) {
    // The protocol never needs 4 GiB in one chunk; a client MAY drop the connection here.
    throw new ProtocolError(`extended reply chunk claims ${BigInt(lengthHigh) * BigInt(TWO_32) + BigInt(buf.readUInt32BE(at + 28))} bytes`)
  }
  into.offset = buf.readBigUInt64BE(at + 16)
  into.length = buf.readUInt32BE(at + 28)
  return into
}
