/**
 * The main thread's end of /dev/fuse: requests arrive as views of shared slots (see
 * device-worker.ts), replies leave with one writev each. Replies are synchronous writes: the
 * device never blocks a writer, and a synchronous write lets one header buffer serve every
 * reply.
 */
import { closeSync, writev, writevSync } from 'node:fs'
import { Worker } from 'node:worker_threads'
import { OUT_HEADER } from './abi.ts'
import { encodeOutHeader } from './codec.ts'
import type { DeviceWorkerData } from './device-worker.ts'
import { END, FREES, HEAD, IDLE, SLOT_FREE, TAIL, WAKE, next, ringLayout, type RingLayout } from './ring.ts'

export interface ChannelOptions {
  readonly fd: number
  readonly slotCount: number
  /** Bytes per slot: the largest WRITE plus headers. */
  readonly slotSize: number
  /** Where the ring's HEAD and TAIL counters start (tests start them near the int32 wrap). */
  readonly ringStart?: number
}

export type RequestHandler = (request: Buffer, slot: number) => void

/** Replies at least this large are written from the thread pool (see replyData). */
const ASYNC_REPLY_MIN = 64 * 1024

/** The worker's file next to this one, whether we run from src/ (tsx) or dist/. */
function workerUrl (): URL {
  const here = import.meta.url
  return new URL(here.endsWith('.ts') ? './device-worker.ts' : './device-worker.js', here)
}

export class FuseChannel {
  readonly #fd: number
  readonly #slots: SharedArrayBuffer
  readonly #slotSize: number
  readonly #state: Int32Array
  readonly #layout: RingLayout
  readonly #worker: Worker
  readonly #header = Buffer.alloc(OUT_HEADER)
  #closed = false
  /** Replies being written from the thread pool. */
  #writing = 0
  /** Resolves when the device reports the filesystem gone (unmounted or aborted). */
  readonly ended: Promise<string>
  repliesWritten = 0

  constructor (options: ChannelOptions, onRequest: RequestHandler) {
    this.#fd = options.fd
    this.#slotSize = options.slotSize
    this.#slots = new SharedArrayBuffer(options.slotCount * options.slotSize)
    this.#layout = ringLayout(options.slotCount)
    this.#state = new Int32Array(new SharedArrayBuffer(4 * this.#layout.words))
    const control = this.#layout.control
    this.#state[control + HEAD] = this.#state[control + TAIL] = options.ringStart ?? 0
    // Idle until the first request: the reader wakes us with a message.
    this.#state[control + IDLE] = 1
    const data: DeviceWorkerData = {
      fd: options.fd, slots: this.#slots, slotSize: options.slotSize, slotCount: options.slotCount, state: this.#state.buffer as SharedArrayBuffer
    }
    this.#worker = new Worker(workerUrl(), { workerData: data })
    this.ended = new Promise((resolve) => {
      this.#worker.on('message', (message: number | { error: string }) => {
        if (message === WAKE) {
          this.#drain(onRequest)
        } else {
          resolve(message === END ? 'unmounted' : `device error: ${(message as { error: string }).error}`)
        }
      })
      this.#worker.on('error', (err) => { resolve(`device reader failed: ${err.message}`) })
      this.#worker.on('exit', () => { resolve('device reader stopped') })
    })
    // The reader thread keeps the process alive while the filesystem is mounted: that is the
    // daemon's life. It ends by itself once the device reports the unmount (ENODEV).
  }

  /**
   * Takes every request in the ring, then goes idle; re-checks after going idle, so a request
   * that arrived in between is not left waiting for a wake-up that will not come.
   */
  #drain (onRequest: RequestHandler): void {
    const state = this.#state
    const { control, ring, mask } = this.#layout
    for (;;) {
      let tail = Atomics.load(state, control + TAIL)
      while (tail !== Atomics.load(state, control + HEAD)) {
        const slot = Atomics.load(state, ring + (tail & mask))
        tail = next(tail)
        Atomics.store(state, control + TAIL, tail)
        onRequest(Buffer.from(this.#slots, slot * this.#slotSize, this.#slotSize), slot)
      }
      Atomics.store(state, control + IDLE, 1)
      if (tail === Atomics.load(state, control + HEAD)) return
      // More arrived while we were going idle; if the reader saw IDLE=1 it also posted a wake.
      if (Atomics.exchange(state, control + IDLE, 0) === 0) return
    }
  }

  /** Hands a slot back to the reader once its request is answered (and its data used). */
  release (slot: number): void {
    Atomics.store(this.#state, slot, SLOT_FREE)
    const frees = this.#layout.control + FREES
    Atomics.add(this.#state, frees, 1)
    Atomics.notify(this.#state, frees)
  }

  /**
   * Writes a successful reply carrying `data`, then calls `done` once `data` may be reused.
   * Large replies are written from libuv's thread pool: the kernel copies them into the
   * reader's pages there (pinning them, under locks, a third of the daemon's time at 1 MiB),
   * while this thread goes on reading the next payload from the server.
   */
  replyData (unique: number, data: Buffer, done: () => void): void {
    if (this.#closed || data.length < ASYNC_REPLY_MIN) {
      this.reply(unique, 0, data)
      done()
      return
    }
    const header = Buffer.allocUnsafe(OUT_HEADER)
    encodeOutHeader(header, data.length, 0, unique)
    this.#writing++
    writev(this.#fd, [header, data], (err) => {
      this.#writing--
      if (err === null) this.repliesWritten++
      else if (err.code !== 'ENOENT' && !this.#closed) this.onError?.(err)
      done()
      if (this.#writing === 0 && this.#closed) this.#closeFd()
    })
  }

  /** An asynchronous reply failed for a reason other than an interrupted request. */
  onError: ((err: Error) => void) | null = null

  /** Writes a reply: `error` is 0 or a negative errno; `parts` the reply body. */
  reply (unique: number, error: number, ...parts: Buffer[]): void {
    if (this.#closed) return
    let length = 0
    for (const p of parts) length += p.length
    encodeOutHeader(this.#header, error === 0 ? length : 0, error, unique)
    try {
      writevSync(this.#fd, error === 0 ? [this.#header, ...parts] : [this.#header])
      this.repliesWritten++
    } catch (err) {
      // ENOENT: the request was interrupted and the kernel no longer waits for it.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
  }

  /**
   * Closes the device (once the replies being written are out: the descriptor must not be
   * reused under them). The reader thread ends when its blocking read returns (ENODEV).
   */
  close (): void {
    if (this.#closed) return
    this.#closed = true
    if (this.#writing === 0) this.#closeFd()
  }

  #closeFd (): void {
    try {
      closeSync(this.#fd)
    } catch { /* already closed */ }
  }
}
