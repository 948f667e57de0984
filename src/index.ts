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
export { parseNbdUri, formatNbdUri } from './protocol/uri.ts'
export type { NbdAddress, NbdUri } from './protocol/uri.ts'
export * from './errors.ts'
