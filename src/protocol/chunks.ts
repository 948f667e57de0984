/**
 * Structured reply chunks (spec §"Structured reply types"). `classifyChunk` runs on the
 * header alone, so every length is checked against what the chunk type and the request
 * allow before a single payload byte is read or allocated (strict-client rules 17, 18, 21).
 *
 *   type                 length              payload                           valid for
 *   NONE            0    = 0 (and DONE)      -                                 any
 *   OFFSET_DATA     1    ≥ 9                 8 offset | data                   READ
 *   OFFSET_HOLE     2    = 12                8 offset | 4 hole size (≠ 0)       READ
 *   BLOCK_STATUS    5    4 + 8n, n ≥ 1       4 context | n × (4 length | 4 flags)  BLOCK_STATUS (compact)
 *   BLOCK_STATUS_EXT 6   8 + 16n, n ≥ 1      4 context | 4 n | n × (8 length | 8 flags)  (extended)
 *   ERROR        0x8001  ≥ 6                 4 error | 2 message length | message       any
 *   ERROR_OFFSET 0x8002  ≥ 14                4 error | 2 message length | message | 8 offset   data commands
 */
import { ProtocolError } from '../errors.ts'
import {
  NBD_CMD, NBD_MAX_EXTENTS, NBD_MAX_STRING, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE, NBD_REPLY_TYPE_ERROR_BIT
} from './constants.ts'
import { chunkTypeName, commandName } from './names.ts'
import type { ReplyHeader, ReplyMode } from './reply.ts'
import { printable } from '../util/printable.ts'
import { decodeString } from './strings.ts'

export type ChunkKind = 'none' | 'offset-data' | 'offset-hole' | 'block-status' | 'error'

/** Unknown error chunk types may carry more than a message, but not without bound. */
const MAX_UNKNOWN_ERROR_CHUNK = 64 * 1024

const ERROR_OFFSET_COMMANDS: ReadonlySet<number> = new Set([
  NBD_CMD.READ, NBD_CMD.WRITE, NBD_CMD.TRIM, NBD_CMD.CACHE, NBD_CMD.WRITE_ZEROES, NBD_CMD.BLOCK_STATUS
])

function violation (header: ReplyHeader, command: number, what: string): ProtocolError {
  return new ProtocolError(`${chunkTypeName(header.type)} chunk (${header.length} bytes) answering ${commandName(command)}: ${what}`)
}

/**
 * Decides what a chunk is, given the command it answers, and whether its length is legal.
 * `requestLength` is the byte count of the request (a READ's data can never exceed it).
 */
export function classifyChunk (header: ReplyHeader, command: number, requestLength: number, mode: ReplyMode): ChunkKind {
  const { type, length } = header
  switch (type) {
    case NBD_REPLY_TYPE.NONE:
      if (length !== 0) throw violation(header, command, 'NONE must be empty')
      if ((header.flags & NBD_REPLY_FLAG_DONE) === 0) throw violation(header, command, 'NONE must carry the DONE flag')
      return 'none'
    case NBD_REPLY_TYPE.OFFSET_DATA:
      if (command !== NBD_CMD.READ) throw violation(header, command, 'data chunks only answer READ')
      if (length < 9) throw violation(header, command, 'must hold an offset and at least one byte')
      if (length - 8 > requestLength) throw violation(header, command, `carries more data than the ${requestLength} bytes requested`)
      return 'offset-data'
    case NBD_REPLY_TYPE.OFFSET_HOLE:
      if (command !== NBD_CMD.READ) throw violation(header, command, 'hole chunks only answer READ')
      if (length !== 12) throw violation(header, command, 'must be exactly 12 bytes')
      return 'offset-hole'
    case NBD_REPLY_TYPE.BLOCK_STATUS:
      if (command !== NBD_CMD.BLOCK_STATUS) throw violation(header, command, 'status chunks only answer BLOCK_STATUS')
      if (mode === 'extended') throw violation(header, command, 'compact status chunk after extended headers were negotiated')
      if (length < 12 || (length - 4) % 8 !== 0) throw violation(header, command, 'length is not 4 + 8n with n ≥ 1')
      if ((length - 4) / 8 > NBD_MAX_EXTENTS) throw violation(header, command, `more than ${NBD_MAX_EXTENTS} extents`)
      return 'block-status'
    case NBD_REPLY_TYPE.BLOCK_STATUS_EXT:
      if (command !== NBD_CMD.BLOCK_STATUS) throw violation(header, command, 'status chunks only answer BLOCK_STATUS')
      if (mode !== 'extended') throw violation(header, command, 'extended status chunk without extended headers')
      if (length < 24 || (length - 8) % 16 !== 0) throw violation(header, command, 'length is not 8 + 16n with n ≥ 1')
      if ((length - 8) / 16 > NBD_MAX_EXTENTS) throw violation(header, command, `more than ${NBD_MAX_EXTENTS} extents`)
      return 'block-status'
    case NBD_REPLY_TYPE.ERROR:
      if (length < 6 || length > 6 + NBD_MAX_STRING) throw violation(header, command, 'error chunk length out of range')
      return 'error'
    case NBD_REPLY_TYPE.ERROR_OFFSET:
      if (!ERROR_OFFSET_COMMANDS.has(command)) throw violation(header, command, 'ERROR_OFFSET does not apply to this command')
      if (length < 14 || length > 14 + NBD_MAX_STRING) throw violation(header, command, 'error chunk length out of range')
      return 'error'
    default:
      if ((type & NBD_REPLY_TYPE_ERROR_BIT) !== 0) {
        // An unknown error type still fails the request, as long as it is well formed.
        if (length < 6 || length > MAX_UNKNOWN_ERROR_CHUNK) throw violation(header, command, 'unknown error chunk with an unusable length')
        return 'error'
      }
      throw violation(header, command, 'unknown or unexpected chunk type')
  }
}

export interface ErrorChunk {
  readonly error: number
  /** For people only, so control characters come escaped (it ends up in error messages and logs). */
  readonly message: string
  readonly offset: bigint | undefined
}

export function parseErrorChunk (type: number, payload: Buffer): ErrorChunk {
  const error = payload.readUInt32BE(0)
  if (error === 0) throw new ProtocolError(`${chunkTypeName(type)} chunk with error value 0`)
  const messageLength = payload.readUInt16BE(4)
  const fixed = type === NBD_REPLY_TYPE.ERROR_OFFSET ? 14 : 6
  if (messageLength > payload.length - fixed) {
    throw new ProtocolError(`${chunkTypeName(type)} message length ${messageLength} runs past its ${payload.length}-byte chunk`)
  }
  const message = printable(decodeString(payload.subarray(6, 6 + messageLength), `${chunkTypeName(type)} message`))
  const offset = type === NBD_REPLY_TYPE.ERROR_OFFSET ? payload.readBigUInt64BE(6 + messageLength) : undefined
  return { error, message, offset }
}

export interface HoleChunk {
  readonly offset: bigint
  readonly size: number
}

export function parseOffsetHole (payload: Buffer): HoleChunk {
  const size = payload.readUInt32BE(8)
  if (size === 0) throw new ProtocolError('OFFSET_HOLE chunk with a hole size of 0')
  return { offset: payload.readBigUInt64BE(0), size }
}
