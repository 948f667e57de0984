/**
 * nbdts/protocol: the pure NBD codec (the design's "nbd-protocol"). No sockets, timers or
 * promises: bytes in, values or typed errors out, and headers written into caller buffers.
 */
export * from './constants.ts'
export * from './names.ts'
export * from './errno.ts'
export * from './strings.ts'
export * from './greeting.ts'
export * from './option.ts'
export * from './info.ts'
export * from './list.ts'
export * from './meta-context.ts'
export * from './export-name.ts'
export * from './export-flags.ts'
export * from './request.ts'
export * from './reply.ts'
export * from './chunks.ts'
export * from './block-status.ts'
export * from './read-assembly.ts'
export * from './uri.ts'
export {
  NbdError, ProtocolError, HandshakeError, ServerError, InvalidArgumentError, UriError, NBD_ERROR_CODES
} from '../errors.ts'
export type { NbdErrorCode, NbdErrno } from '../errors.ts'
