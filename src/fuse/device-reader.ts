/**
 * Where FUSE requests come from: a reader of the device that hands each request over in a slot
 * (a buffer big enough for the largest WRITE) and takes the slot back once it is answered.
 *
 *   drain   the main thread reads the non-blocking device whenever libuv says it is readable,
 *           every pending request in one go (drained-reader.ts): no thread hop. The default.
 *   thread  a reader thread blocks on the device and passes requests through shared memory
 *           (thread-reader.ts): where koffi cannot poll (or -o reader=thread).
 */

export type RequestHandler = (request: Buffer, slot: number) => void

export type ReaderKind = 'drain' | 'thread'

export interface DeviceReader {
  readonly kind: ReaderKind
  /** Resolves when the device reports the filesystem gone (unmounted or aborted), or reading failed. */
  readonly ended: Promise<string>
  /** The request in `slot` is answered (and its data used): the slot may be read into again. */
  release: (slot: number) => void
  /** Stops reading; the descriptor is closed after this. */
  stop: () => void
  /** Gives the memory of idle slots back (after a burst); a reader that cannot has none. */
  trim?: () => void
}

export interface ReaderOptions {
  readonly fd: number
  readonly slotCount: number
  /** Bytes per slot: the largest WRITE plus headers. */
  readonly slotSize: number
}
