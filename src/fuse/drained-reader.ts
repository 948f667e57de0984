/**
 * The device read on the main thread: /dev/fuse made non-blocking and polled by libuv
 * (koffi.node.poll); each time it is readable, every pending request is read, one read(2)
 * each, until EAGAIN, and each is handled before the next is read (so requests are handled in
 * the order the kernel queued them, as with the reader thread). A request costs no thread hop
 * and no message (the reader thread's cost at QD 1), and a burst is served in one wake-up, its
 * NBD requests leaving in one writev (what a libuv stream over the device could not do: it
 * reads one request per loop turn, which lost 25% at 4 jobs × QD 16).
 *
 *   slots:  a stack of free slots (the most recently used first: their pages are resident)
 *           pop ─► read(2) into it ─► handler ─► release() pushes it back (exactly once:
 *           a slot released while free is a bug, refused loudly, never a second owner)
 *           none free: stop polling until one comes back
 *
 *   end:    read(2) ENODEV (unmounted, aborted) or 0 (a socket standing in for the device)
 *           ─► 'unmounted'; libuv's error status (POLLERR: the device is disconnected) with
 *           no slot to read into waits for a slot, then reads the ENODEV; stop() ─► 'stopped'
 *
 * READ requests give their slot back as soon as they are parsed, so a stream of reads keeps
 * reusing one slot; a WRITE keeps its slot until its payload has been sent.
 */
import { constants } from 'node:os'
import { discardPages, pageMemory, pollReadable, readFd, setNonBlocking, type FdPoll, type PageMemory } from '../util/libc.ts'
import { busyPoll } from '../transport/busy-poll.ts'
import type { DeviceReader, ReaderOptions, RequestHandler } from './device-reader.ts'

const { EAGAIN, EINTR, ENOENT, ENODEV } = constants.errno
/** Reads per wake-up at most, so the NBD sockets get their turn (the poll fires again). */
const BUDGET = 256

/** How a drain ended. */
type Drained = 'empty' | 'full' | 'budget' | 'ended'

export class DrainedReader implements DeviceReader {
  readonly kind = 'drain'
  readonly ended: Promise<string>
  readonly #fd: number
  readonly #slotSize: number
  readonly #memory: PageMemory
  readonly #views: Array<Buffer | undefined>
  readonly #free: number[] = []
  /** 1 while a slot holds a request (between its read and its release). */
  readonly #busy: Uint8Array
  readonly #onRequest: RequestHandler
  readonly #poll: FdPoll
  #polling = false
  #stopped = false
  #end: (why: string) => void = () => {}

  /** Throws if the main thread cannot poll the device here (use the thread reader then). */
  constructor (options: ReaderOptions, onRequest: RequestHandler) {
    this.#fd = options.fd
    this.#slotSize = options.slotSize
    this.#onRequest = onRequest
    // One region for every slot: pages are resident only once the kernel writes into them,
    // and given back by trim() once idle (a burst of 1 MiB writes touches them all).
    this.#memory = pageMemory(options.slotCount * options.slotSize, 'FUSE slot memory')
    this.#views = new Array<Buffer | undefined>(options.slotCount)
    this.#busy = new Uint8Array(options.slotCount)
    for (let slot = options.slotCount - 1; slot >= 0; slot--) this.#free.push(slot)
    // Non-blocking first: a read on a blocking device would stall the whole loop. (libuv sets
    // it too, but correctness here must not rest on that.)
    setNonBlocking(options.fd)
    const poll = pollReadable(options.fd, (status) => { this.#readable(status) })
    if (poll === undefined) throw new Error('this koffi cannot poll a descriptor from the main thread')
    this.#poll = poll
    this.ended = new Promise((resolve) => { this.#end = resolve })
    busyPoll.watch(options.fd)
    this.#startPolling()
  }

  /** Gives the pages of every free slot back to the kernel (the kernel writes a slot only when we read into it, here). */
  trim (): void {
    for (const slot of this.#free) discardPages(this.#memory, slot * this.#slotSize, this.#slotSize)
  }

  release (slot: number): void {
    if (this.#busy[slot] !== 1) {
      // Pushing it again would let two requests share one buffer: a WRITE's payload could be
      // overwritten before it is sent. Refuse, so the bug shows where it is made.
      throw new Error(`FUSE slot ${slot} released while it holds no request`)
    }
    this.#busy[slot] = 0
    this.#free.push(slot)
    if (!this.#polling && !this.#stopped) this.#startPolling()
  }

  /** Stops reading (for good): `ended` settles ('stopped' unless it already said why). */
  stop (): void {
    this.#finish('stopped')
  }

  #startPolling (): void {
    this.#polling = true
    this.#poll.start()
  }

  #readable (status: number): void {
    if (this.#stopped) return
    let drained: Drained
    try {
      drained = this.#drain()
    } catch (err) {
      // A handler that throws must not leave the poll callback (koffi cannot report it).
      this.#finish(`device reader failed: ${(err as Error).message}`)
      return
    }
    if (status >= 0 || drained === 'ended') return
    // An error status is how libuv reports POLLERR, which the device raises once the
    // filesystem is gone; libuv has stopped the handle. The read says why (ENODEV): with no
    // slot to read into, release() polls again and the error comes back; after a full budget,
    // poll again now.
    if (drained === 'full') return
    if (drained === 'budget') this.#startPolling()
    else this.#finish(`device error: poll status ${status}`)
  }

  #drain (): Drained {
    for (let budget = BUDGET; budget > 0; budget--) {
      if (this.#stopped) return 'ended'
      const slot = this.#free.pop()
      if (slot === undefined) {
        // Every slot is busy: wait for one to come back (release() polls again).
        this.#polling = false
        this.#poll.stop()
        return 'full'
      }
      const view = this.#views[slot] ??= this.#memory.buffer.subarray(slot * this.#slotSize, (slot + 1) * this.#slotSize)
      const n = readFd(this.#fd, view)
      if (n > 0) {
        this.#busy[slot] = 1
        this.#onRequest(view, slot)
        continue
      }
      this.#free.push(slot)
      if (n === -EAGAIN) return 'empty'
      // ENOENT: the request was interrupted before we read it. EINTR: try again.
      if (n === -ENOENT || n === -EINTR) continue
      // ENODEV: unmounted (or the connection was aborted). 0: a socket standing in for the device ended.
      this.#finish(n === 0 || n === -ENODEV ? 'unmounted' : `device error: ${errnoName(-n)}`)
      return 'ended'
    }
    return 'budget'
  }

  #finish (why: string): void {
    if (!this.#stopped) {
      this.#stopped = true
      this.#polling = false
      this.#poll.close()
      busyPoll.unwatch(this.#fd)
    }
    this.#end(why)
  }
}

function errnoName (errno: number): string {
  return Object.entries(constants.errno).find(([, value]) => value === errno)?.[0] ?? `errno ${errno}`
}
