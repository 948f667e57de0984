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
export * from './errors.ts'
export type { Failback, PathChange, PathIdentity, PathSelector, PathState, PathStatus } from './multipath/index.ts'
