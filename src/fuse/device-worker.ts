/**
 * The device reader, in its own thread: blocking reads on /dev/fuse, one request per read,
 * each into a free slot of shared memory. A blocking read per request on libuv's threadpool
 * costs two thread hand-offs and a queue submission per request (measured here: 22.7k IOPS at
 * 4 jobs × QD16 from memory); one reader thread over shared slots reached 132k.
 *
 * Hand-over to the main thread is a ring of slot numbers in shared memory (ring.ts). The main
 * thread drains the whole ring in one go (so everything that arrived together is answered
 * together, and its NBD requests leave in one writev); a message is posted only to wake it
 * when it went idle.
 *
 *   wake:   main sets IDLE=1, then re-checks the ring; reader swaps IDLE to 0 and posts only
 *           if it was 1 (no lost wake-up, no message per request)
 */
import { readSync } from 'node:fs'
import { parentPort, workerData } from 'node:worker_threads'
import { END, FREES, HEAD, IDLE, SLOT_FILLED, SLOT_FREE, WAKE, next, ringLayout } from './ring.ts'

export interface DeviceWorkerData {
  readonly fd: number
  readonly slots: SharedArrayBuffer
  readonly slotSize: number
  readonly slotCount: number
  /** Int32Array words, laid out by ringLayout(slotCount). */
  readonly state: SharedArrayBuffer
}

function run ({ fd, slots, slotSize, slotCount, state: stateBuffer }: DeviceWorkerData): void {
  const state = new Int32Array(stateBuffer)
  const { control, ring, mask } = ringLayout(slotCount)
  for (;;) {
    // The lowest free slot, so only as many slots as are ever busy at once get touched (and
    // count in the daemon's memory); when all are busy, sleep until the main thread frees one.
    let i = 0
    while (Atomics.load(state, i) !== SLOT_FREE) {
      if (++i === slotCount) {
        Atomics.wait(state, control + FREES, Atomics.load(state, control + FREES), 1000)
        i = 0
      }
    }
    let n: number
    try {
      n = readSync(fd, new Uint8Array(slots, i * slotSize, slotSize))
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      // ENOENT: the request was interrupted before we read it. EINTR/EAGAIN: try again.
      if (code === 'ENOENT' || code === 'EINTR' || code === 'EAGAIN') continue
      // ENODEV: unmounted (or the connection was aborted): our work is done.
      parentPort!.postMessage(code === 'ENODEV' ? END : { error: code ?? String(err) })
      return
    }
    if (n === 0) {
      // /dev/fuse never returns 0; a descriptor that does (a socket in tests) has ended.
      parentPort!.postMessage(END)
      return
    }
    Atomics.store(state, i, SLOT_FILLED)
    const head = Atomics.load(state, control + HEAD)
    Atomics.store(state, ring + (head & mask), i)
    Atomics.store(state, control + HEAD, next(head))
    if (Atomics.exchange(state, control + IDLE, 0) === 1) parentPort!.postMessage(WAKE)
  }
}

if (parentPort !== null && workerData !== null && typeof workerData === 'object' && 'fd' in workerData) {
  run(workerData as DeviceWorkerData)
}
