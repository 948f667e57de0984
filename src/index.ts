/**
 * nbdts: a userspace NBD client. See README.md for a tour.
 */
export { NbdClient, NBD_CLIENT_STATE, stateChannel } from './client/index.ts'
export type {
  BlockStatus, BlockStatusOptions, ClientStateChange, ConnectionInfo, Extent, MapOptions, NbdClientOptions, NbdClientState,
  Offset, RequestOptions, StateChange, WriteOptions, ZeroOptions
} from './client/index.ts'
export type { ExportInfo, BackoffOptions, ListedExport } from './connector/index.ts'
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
