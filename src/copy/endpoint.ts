/**
 * What the copier needs from each end. Sources and destinations are NBD exports (one client per
 * connection), local files and block devices, pipes (stdin/stdout) and null:.
 *
 *   lane: which connection a request goes on (worker i uses lane i % connections), so each
 *         connection gets its share of the requests in flight, as nbdcopy's threads do.
 */
import type { Extent } from '../client/index.ts'

export interface CopySource {
  /** How the user named it, for messages. */
  readonly name: string
  /** Bytes; undefined for a pipe (read until EOF). */
  readonly size: number | undefined
  /** Connections to spread reads over (1 for files and pipes). */
  readonly connections: number
  /** The server's preferred request size, if it said. */
  readonly preferredBlockSize: number | undefined
  /**
   * Random access (readInto) or a stream read in order (readNext). Exactly one is set.
   */
  readInto?: (buffer: Buffer, offset: number, lane: number, signal: AbortSignal) => Promise<void>
  /** Fills `buffer` from the stream; returns bytes read, short only at EOF (0 = EOF). */
  readNext?: (buffer: Buffer, signal: AbortSignal) => Promise<number>
  /** Extents of [offset, offset + length), when the source knows them (NBD base:allocation). */
  extents?: (offset: number, length: number, signal: AbortSignal) => AsyncIterable<Extent>
  /** Reconnects so far (NBD). */
  reconnects?: () => number
  close: () => Promise<void>
}

export interface ZeroRequest {
  /** Keep the range allocated (--allocated): WRITE_ZEROES with NO_HOLE, or written zeroes. */
  readonly allocated: boolean
}

export interface CopyDestination {
  readonly name: string
  /** Bytes; undefined when any amount fits (a pipe, null:). */
  readonly size: number | undefined
  readonly connections: number
  readonly preferredBlockSize: number | undefined
  /** false: writes must come in order and zeroes are written as bytes (a pipe). */
  readonly seekable: boolean
  /** Reads as zeroes before we start (a new or truncated file, null:). */
  readonly startsZero: boolean
  /**
   * Keeps nothing (null:): a write costs no more than a skipped zero run, so the copier spends
   * no time looking for zero blocks (a tenth of a dense copy's time to null:).
   */
  readonly discards?: boolean
  write: (data: Buffer, offset: number, lane: number, signal: AbortSignal) => Promise<void>
  /** Makes [offset, offset + length) read as zeroes (a hole unless `allocated`). */
  zero: (offset: number, length: number, lane: number, request: ZeroRequest, signal: AbortSignal) => Promise<void>
  /** Makes what was written durable (--flush). */
  flush: (signal: AbortSignal) => Promise<void>
  /** After a copy from a pipe (size unknown until EOF): the size the destination must have. */
  setSize?: (size: number) => Promise<void>
  /** Reconnects so far (NBD). */
  reconnects?: () => number
  close: () => Promise<void>
}

/** A shared buffer of zeroes for destinations that must write them (pipes, block devices). */
export const ZERO_CHUNK = Buffer.alloc(1 << 20)

/** Writes [offset, offset + length) of zeroes through `write`, ZERO_CHUNK at a time, in order. */
export async function writeZeroBytes (write: (data: Buffer, offset: number) => Promise<void>, offset: number, length: number): Promise<void> {
  for (let at = 0; at < length; at += ZERO_CHUNK.length) {
    await write(ZERO_CHUNK.subarray(0, Math.min(ZERO_CHUNK.length, length - at)), offset + at)
  }
}
