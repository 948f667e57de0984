export { createReadStream } from './read-stream.ts'
export type { DataChunk, ReadStreamOptions, SparseChunk, ZeroChunk } from './read-stream.ts'
export { createWriteStream } from './write-stream.ts'
export type { WriteStreamOptions } from './write-stream.ts'
