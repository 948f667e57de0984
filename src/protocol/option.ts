/**
 * Option requests and option replies (spec §"Option haggling").
 *
 *   C: 8 IHAVEOPT | 4 option | 4 length | length bytes of data
 *   S: 8 0x3e889045565a9 | 4 option (echo) | 4 reply type | 4 length | length bytes of data
 *
 * The client sends one option at a time and waits for its final reply (ACK or any error).
 */
import { ProtocolError } from '../errors.ts'
import {
  NBD_OPT, NBD_OPTION_HEADER, NBD_OPTS_MAGIC, NBD_REP, NBD_REP_FLAG_ERROR, NBD_REP_MAGIC
} from './constants.ts'
import { optionName, replyName } from './names.ts'
import { printable } from '../util/printable.ts'
import { decodeString } from './strings.ts'

/**
 * The largest option reply we accept. Every legitimate reply is a few strings of at most
 * 4 KiB each; anything bigger is a server trying to make us allocate.
 */
export const MAX_OPTION_REPLY = 64 * 1024

/**
 * What one option may receive before its final reply, and what a whole handshake may. A
 * server can answer NBD_OPT_LIST or a meta context query with replies without end; each is
 * small, but together they would fill the heap. Legitimate servers stay far below these
 * (thousands of exports, hundreds of dirty bitmaps); the bytes count headers too.
 */
export interface ReplyBudget {
  readonly replies: number
  readonly bytes: number
}

const MiB = 1024 * 1024

export const OPTION_REPLY_BUDGET: Readonly<Record<number, ReplyBudget>> = {
  [NBD_OPT.LIST]: { replies: 4096, bytes: 4 * MiB },
  [NBD_OPT.LIST_META_CONTEXT]: { replies: 1024, bytes: 1 * MiB },
  [NBD_OPT.SET_META_CONTEXT]: { replies: 1024, bytes: 1 * MiB },
  [NBD_OPT.INFO]: { replies: 64, bytes: 1 * MiB },
  [NBD_OPT.GO]: { replies: 64, bytes: 1 * MiB }
}

/** Every option reply of one connection's handshake together (listing exports included). */
export const HANDSHAKE_REPLY_BYTES = 16 * MiB

export function encodeOptionRequest (option: number, data?: Uint8Array): Buffer {
  const length = data?.length ?? 0
  const out = Buffer.allocUnsafe(NBD_OPTION_HEADER + length)
  out.writeBigUInt64BE(NBD_OPTS_MAGIC, 0)
  out.writeUInt32BE(option, 8)
  out.writeUInt32BE(length, 12)
  if (data !== undefined) out.set(data, NBD_OPTION_HEADER)
  return out
}

export interface OptionReplyHeader {
  readonly option: number
  readonly type: number
  readonly length: number
}

/** Parses a 20-byte reply header, checking the magic, the option echo and the length cap. */
export function parseOptionReplyHeader (header: Buffer, sentOption: number): OptionReplyHeader {
  const magic = header.readBigUInt64BE(0)
  if (magic !== NBD_REP_MAGIC) {
    throw new ProtocolError(`bad option reply magic 0x${magic.toString(16)} in answer to ${optionName(sentOption)}`)
  }
  const option = header.readUInt32BE(8)
  const type = header.readUInt32BE(12)
  const length = header.readUInt32BE(16)
  if (option !== sentOption) {
    throw new ProtocolError(`server answered ${optionName(option)} while ${optionName(sentOption)} was pending`)
  }
  if (length > MAX_OPTION_REPLY) {
    throw new ProtocolError(`${replyName(type)} to ${optionName(option)} claims ${length} bytes, above the ${MAX_OPTION_REPLY}-byte cap`)
  }
  if (!isErrorReply(type)) checkReplyFitsOption(option, type, length)
  return { option, type, length }
}

export function isErrorReply (type: number): boolean {
  return (type & NBD_REP_FLAG_ERROR) !== 0
}

/** Which non-error reply types each option may receive besides ACK (strict-client rule 5). */
const ALLOWED_REPLIES: Readonly<Record<number, readonly number[]>> = {
  [NBD_OPT.LIST]: [NBD_REP.SERVER],
  [NBD_OPT.INFO]: [NBD_REP.INFO],
  [NBD_OPT.GO]: [NBD_REP.INFO],
  [NBD_OPT.LIST_META_CONTEXT]: [NBD_REP.META_CONTEXT],
  [NBD_OPT.SET_META_CONTEXT]: [NBD_REP.META_CONTEXT]
}

function checkReplyFitsOption (option: number, type: number, length: number): void {
  if (type === NBD_REP.ACK) {
    if (length !== 0) throw new ProtocolError(`NBD_REP_ACK to ${optionName(option)} carries ${length} bytes of data`)
    return
  }
  if (!(ALLOWED_REPLIES[option] ?? []).includes(type)) {
    throw new ProtocolError(`unexpected ${replyName(type)} in answer to ${optionName(option)}`)
  }
}

/** An option error: which error, and the server's message if it sent one. */
export interface OptionError {
  readonly type: number
  readonly name: string
  /** For people only, so control characters come escaped (it ends up in error messages and logs). */
  readonly message: string
}

export function parseOptionError (type: number, payload: Buffer): OptionError {
  return { type, name: replyName(type), message: printable(decodeString(payload, `message of ${replyName(type)}`)) }
}
