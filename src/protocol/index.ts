/**
 * nbdts/protocol: the pure NBD codec (the design's "nbd-protocol"). No sockets, timers or
 * promises: bytes in, values or typed errors out, and headers written into caller buffers.
 *
 * Every name is listed here rather than re-exported wholesale, so nothing a module keeps for
 * the client (its reply budgets, its limits, the names `nbdts info` prints) becomes public by
 * accident; test/package checks that this list is what the package exports.
 */
export {
  NBD_INIT_MAGIC, NBD_OPTS_MAGIC, NBD_CLISERV_MAGIC, NBD_REP_MAGIC, NBD_REQUEST_MAGIC, NBD_EXTENDED_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC, NBD_STRUCTURED_REPLY_MAGIC, NBD_EXTENDED_REPLY_MAGIC, NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_NO_ZEROES,
  NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_OPT, NBD_REP_FLAG_ERROR, NBD_REP, NBD_INFO, NBD_FLAG, NBD_CMD, NBD_CMD_FLAG,
  NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR_BIT, NBD_REPLY_TYPE, NBD_STATE_HOLE, NBD_STATE_ZERO, NBD_STATE_DIRTY, NBD_DEFAULT_PORT,
  NBD_MAX_STRING, NBD_DEFAULT_MAX_PAYLOAD, NBD_MAX_EXTENTS, NBD_GREETING_PREFIX, NBD_OLDSTYLE_REST, NBD_OPTION_HEADER,
  NBD_OPTION_REPLY_HEADER, NBD_REQUEST_HEADER, NBD_EXTENDED_REQUEST_HEADER, NBD_SIMPLE_REPLY_HEADER, NBD_STRUCTURED_REPLY_HEADER,
  NBD_EXTENDED_REPLY_HEADER, NBD_EXPORT_NAME_REPLY, NBD_EXPORT_NAME_ZEROES
} from './constants.ts'
export type { NbdOpt, NbdCmd } from './constants.ts'
export { optionName, replyName, commandName, chunkTypeName } from './names.ts'
export { NBD_ERRNO, NBD_ESHUTDOWN, errnoFromNbd } from './errno.ts'
export { decodeString, encodeString } from './strings.ts'
export { parseGreetingPrefix, parseHandshakeFlags, encodeClientFlags } from './greeting.ts'
export type { GreetingStyle, HandshakeFlags } from './greeting.ts'
export { encodeOptionRequest, parseOptionReplyHeader, isErrorReply, parseOptionError } from './option.ts'
export type { OptionReplyHeader, OptionError } from './option.ts'
export { encodeInfoRequest, parseInfoReply, checkBlockSize } from './info.ts'
export type { BlockSizeConstraints, InfoReply } from './info.ts'
export { parseServerReply } from './list.ts'
export type { ExportListing } from './list.ts'
export { encodeMetaContextRequest, parseMetaContextReply } from './meta-context.ts'
export type { MetaContextReply } from './meta-context.ts'
export { encodeExportNameRequest, parseExportNameReply } from './export-name.ts'
export type { ExportNameReply } from './export-name.ts'
export { usableTransmissionFlags } from './export-flags.ts'
export { requestHeaderSize, encodeRequest } from './request.ts'
export { replyHeaderSize, parseReplyHeader } from './reply.ts'
export type { ReplyMode, ReplyHeader } from './reply.ts'
export { classifyChunk, parseErrorChunk, parseOffsetHole } from './chunks.ts'
export type { ChunkKind, ErrorChunk, HoleChunk } from './chunks.ts'
export { parseBlockStatus } from './block-status.ts'
export type { Extent, StatusChunk } from './block-status.ts'
export { ReadAssembly } from './read-assembly.ts'
export { parseNbdUri, formatNbdUri } from './uri.ts'
export type { TlsMode, TlsType, NbdAddress, NbdUri } from './uri.ts'
export {
  NbdError, ProtocolError, HandshakeError, ServerError, InvalidArgumentError, UriError, NBD_ERROR_CODES
} from '../errors.ts'
export type { NbdErrorCode, NbdErrno } from '../errors.ts'
