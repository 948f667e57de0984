/**
 * The main thread's end of /dev/fuse: requests come from a device reader (device-reader.ts:
 * drained on the main thread by default, a reader thread where koffi cannot poll), replies
 * leave with one writev each. Replies are synchronous writes: the device never blocks a
 * writer, and a synchronous write lets one header buffer serve every reply.
 */
import { closeSync, writevSync } from 'node:fs'
import { OUT_HEADER } from './abi.ts'
import { encodeOutHeader } from './codec.ts'
import type { DeviceReader, ReaderKind, RequestHandler } from './device-reader.ts'
import { DrainedReader } from './drained-reader.ts'
import { ThreadReader } from './thread-reader.ts'
import { busyPoll } from '../transport/busy-poll.ts'

export type { RequestHandler } from './device-reader.ts'

export interface ChannelOptions {
  readonly fd: number
  readonly slotCount: number
  /** Bytes per slot: the largest WRITE plus headers. */
  readonly slotSize: number
  /** Who reads the device. @default 'drain' where koffi can poll, else 'thread' */
  readonly reader?: ReaderKind
  /** Thread reader: where the ring's HEAD and TAIL counters start (tests start them near the int32 wrap). */
  readonly ringStart?: number
}

export class FuseChannel {
  readonly #fd: number
  readonly #reader: DeviceReader
  readonly #header = Buffer.alloc(OUT_HEADER)
  #closed = false
  /** Resolves when the device reports the filesystem gone (unmounted or aborted). */
  readonly ended: Promise<string>
  repliesWritten = 0

  constructor (options: ChannelOptions, onRequest: RequestHandler) {
    this.#fd = options.fd
    this.#reader = openReader(options, onRequest)
    this.ended = this.#reader.ended
  }

  /** Who reads the device. */
  get reader (): ReaderKind {
    return this.#reader.kind
  }

  /** Gives the memory of idle request slots back to the kernel (after a burst). */
  trim (): void {
    if (!this.#closed) this.#reader.trim?.()
  }

  /** Hands a slot back to the reader once its request is answered (and its data used). */
  release (slot: number): void {
    this.#reader.release(slot)
  }

  /**
   * Writes a successful reply carrying `data`, then calls `done`: `data` may be reused.
   *
   * Written here, synchronously, like every reply, whatever its size. Large replies used to be
   * written from libuv's thread pool so that this thread could go on reading the next payload
   * from the server while the kernel copies the reply into the reader's pages; that measured
   * no faster (1 MiB read 0.99×, dd copy 0.92× against synchronous writes, bench/README.md),
   * and it kept each READ buffer until the write's callback came back to this thread, after
   * the kernel had already let the reader send its next READ: at QD 16, ~30 READ buffers
   * resident instead of ~16 (bench/mount-memory.ts).
   */
  replyData (unique: number, data: Buffer, done: () => void): void {
    try {
      this.reply(unique, 0, data)
    } finally {
      done()
    }
  }

  /** Writes a reply: `error` is 0 or a negative errno; `parts` the reply body. */
  reply (unique: number, error: number, ...parts: Buffer[]): void {
    if (this.#closed) return
    let length = 0
    for (const p of parts) length += p.length
    encodeOutHeader(this.#header, error === 0 ? length : 0, error, unique)
    try {
      writevSync(this.#fd, error === 0 ? [this.#header, ...parts] : [this.#header])
      this.repliesWritten++
      // The caller often sends its next request at once: spin for it before sleeping.
      busyPoll.arm()
    } catch (err) {
      // ENOENT: the request was interrupted and the kernel no longer waits for it.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
  }

  /** Closes the device, after the reader stopped. */
  close (): void {
    if (this.#closed) return
    this.#closed = true
    this.#reader.stop()
    try {
      closeSync(this.#fd)
    } catch { /* already closed */ }
  }
}

function openReader (options: ChannelOptions, onRequest: RequestHandler): DeviceReader {
  if (options.reader !== 'thread') {
    try {
      return new DrainedReader(options, onRequest)
    } catch (err) {
      if (options.reader === 'drain') throw err
      // No poll support here: the reader thread works everywhere.
    }
  }
  return new ThreadReader(options, onRequest)
}
