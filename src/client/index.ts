export { NbdClient } from './nbd-client.ts'
export type {
  BlockStatus, BlockStatusOptions, Extent, MapOptions, Offset, RequestInfo, RequestOptions, RequestsInFlightOptions, StateChange,
  WriteOptions, ZeroOptions
} from './nbd-client.ts'
export type { ExportInfo, ListedExport } from './export-info.ts'
export type { ConnectionInfo } from './pool.ts'
export type { NbdClientOptions } from './options.ts'
export { NBD_CLIENT_STATE } from './engine/lifecycle.ts'
export type { NbdClientState } from './engine/lifecycle.ts'
