export { NbdClient } from './nbd-client.ts'
export type {
  BlockStatus, BlockStatusOptions, ClientStateChange, Extent, MapOptions, Offset, RequestOptions, WriteOptions, ZeroOptions
} from './nbd-client.ts'
export type { ConnectionInfo } from './pool.ts'
export type { NbdClientOptions } from './options.ts'
export { NBD_CLIENT_STATE, stateChannel } from './engine/index.ts'
export type { NbdClientState, StateChange } from './engine/index.ts'
