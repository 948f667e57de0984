/**
 * nbdts: a userspace NBD client. See README.md for a tour and docs/library.md for the
 * conventions: data or length first, the offset last, options last of all; numbers, exact
 * up to 2^53, with a bigint form where a value may pass that.
 */
export { NbdClient, NBD_CLIENT_STATE } from './client/index.ts'
export type {
  BlockStatus, BlockStatusOptions, ConnectionInfo, ExportInfo, Extent, ListedExport, MapOptions, NbdClientOptions, NbdClientState,
  Offset, RequestInfo, RequestOptions, RequestsInFlightOptions, StateChange, WriteOptions, ZeroOptions
} from './client/index.ts'
// The status bits of an extent's `flags`: base:allocation's HOLE and ZERO, a dirty bitmap's DIRTY.
export { NBD_STATE_HOLE, NBD_STATE_ZERO, NBD_STATE_DIRTY } from './protocol/constants.ts'
export type { BlockSizeConstraints } from './protocol/info.ts'
export type { BackoffOptions } from './connector/index.ts'
export type { StatsSnapshot } from './stats/index.ts'
export type { OpenSocket } from './transport/index.ts'
export type { TlsMode } from './transport/tls-credentials.ts'
export { parseNbdUri, formatNbdUri } from './protocol/uri.ts'
export type { NbdAddress, NbdUri } from './protocol/uri.ts'
export { createReadStream, createWriteStream } from './streams/index.ts'
export type { DataChunk, ReadStreamOptions, SparseChunk, WriteStreamOptions, ZeroChunk } from './streams/index.ts'
export { startServerCommand } from './activation/index.ts'
export type { ExitStatus, ServerCommand, ServerCommandOptions } from './activation/index.ts'
// The errors, each with its code; not the helpers errors.ts keeps for the rest of the package.
export {
  NBD_ERROR_CODES, NbdError, ProtocolError, HandshakeError, ServerError, ConnectionError, TimeoutError, ReconnectDelayError,
  ServerChangedError, NotSupportedError, InvalidArgumentError, ClosedError, TlsError, UriError, DurabilityError, InDoubtError,
  OffsetRangeError, AbortedError, MountError
} from './errors.ts'
export type { NbdErrorCode, NbdErrno, MountErrorReason } from './errors.ts'
export type { Failback, PathChange, PathIdentity, PathSelector, PathState, PathStatus } from './multipath/index.ts'
