/**
 * The device read in a thread of its own (device-worker.ts), requests handed over through
 * shared slots and a ring of slot numbers (ring.ts). The fallback where the main thread cannot
 * poll the device (a koffi without poll support): each request costs a thread hop, a wake-up
 * message when the main thread went idle.
 */
import { Worker } from 'node:worker_threads'
import { setNonBlocking } from '../util/libc.ts'
import type { DeviceReader, ReaderOptions, RequestHandler } from './device-reader.ts'
import type { DeviceWorkerData } from './device-worker.ts'
import { END, FREES, HEAD, IDLE, SLOT_FILLED, SLOT_FREE, TAIL, WAKE, next, ringLayout, type RingLayout } from './ring.ts'

export interface ThreadReaderOptions extends ReaderOptions {
  /** Where the ring's HEAD and TAIL counters start (tests start them near the int32 wrap). */
  readonly ringStart?: number
}

/** The worker's file next to this one, whether we run from src/ (tsx) or dist/. */
function workerUrl (): URL {
  const here = import.meta.url
  return new URL(here.endsWith('.ts') ? './device-worker.ts' : './device-worker.js', here)
}

export class ThreadReader implements DeviceReader {
  readonly kind = 'thread'
  readonly ended: Promise<string>
  readonly #slots: SharedArrayBuffer
  readonly #slotSize: number
  readonly #state: Int32Array
  readonly #layout: RingLayout

  constructor (options: ThreadReaderOptions, onRequest: RequestHandler) {
    // The thread must block on the device: a non-blocking one (left so by a drained reader
    // that could not start) would have it spin on EAGAIN. Only koffi sets O_NONBLOCK here, so
    // without koffi there is nothing to undo.
    try {
      setNonBlocking(options.fd, false)
    } catch { /* no koffi: the descriptor is as open(2) made it, blocking */ }
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
    const worker = new Worker(workerUrl(), { workerData: data })
    this.ended = new Promise((resolve) => {
      worker.on('message', (message: number | { error: string }) => {
        if (message === WAKE) {
          this.#drain(onRequest)
        } else {
          resolve(message === END ? 'unmounted' : `device error: ${(message as { error: string }).error}`)
        }
      })
      worker.on('error', (err) => { resolve(`device reader failed: ${err.message}`) })
      worker.on('exit', () => { resolve('device reader stopped') })
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

  release (slot: number): void {
    // As in the drained reader: a second release could free the slot under a newer request.
    if (Atomics.compareExchange(this.#state, slot, SLOT_FILLED, SLOT_FREE) !== SLOT_FILLED) {
      throw new Error(`FUSE slot ${slot} released while it holds no request`)
    }
    const frees = this.#layout.control + FREES
    Atomics.add(this.#state, frees, 1)
    Atomics.notify(this.#state, frees)
  }

  /** The thread ends by itself when its blocking read returns (ENODEV, or EBADF once closed). */
  stop (): void {}
}
