export { SocketReader } from './socket-reader.ts'
export type { PayloadSink } from './socket-reader.ts'
export { socketOpener, describeAddress } from './open-socket.ts'
export type { OpenSocket } from './open-socket.ts'
