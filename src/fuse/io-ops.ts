/**
 * The requests that become client requests: READ, WRITE, FSYNC, FALLOCATE and LSEEK. Many
 * run at once, bounded by the client's request slots. A READ's slot is freed as soon as it is
 * parsed; a WRITE keeps its slot until its data has been sent (the payload is a view of the
 * slot, never copied).
 *
 * The export has a fixed size, like a block device, but it is a regular file to the kernel,
 * so range errors follow regular files where they can: fallocate past the end is clamped to
 * the end (a punch or a KEEP_SIZE zeroing there has nothing to do); only what would have to
 * grow the file (allocation or zeroing without KEEP_SIZE) fails, with ENOSPC.
 */
import { constants } from 'node:os'
import type { NbdClient } from '../client/nbd-client.ts'
import { NBD_STATE_HOLE, NBD_STATE_ZERO } from '../protocol/constants.ts'
import { FALLOC_FL, IN_HEADER, SEEK_DATA, SEEK_HOLE, WRITE_IN } from './abi.ts'
import { BufferPool } from './buffer-pool.ts'
import type { FuseChannel } from './channel.ts'
import { encodeU64Out, encodeWriteOut, parseFallocateIn, parseIoIn, parseLseekIn } from './codec.ts'
import { ERRNO } from './errno.ts'
import type { RequestTracker } from './interrupts.ts'

export type IoChannel = Pick<FuseChannel, 'reply' | 'replyData' | 'release'>
type IoClient = Pick<NbdClient, 'sizeBigInt' | 'readInto' | 'write' | 'flush' | 'punchHole' | 'writeZeroes' | 'map' | 'metaContexts' | 'canFlush'>

const EISDIR = -constants.errno.EISDIR
const ALLOCATION = 'base:allocation'

export class IoOps {
  readonly #channel: IoChannel
  readonly #tracker: RequestTracker
  readonly #client: IoClient
  readonly #exportId: number
  readonly #readonly: boolean
  readonly #size: bigint
  /** The size as a number when it is exact (every export below 8 PiB), else -1. */
  readonly #sizeNumber: number
  readonly #pool = new BufferPool()
  /** Scratch for small replies: replies are written synchronously, so one serves all. */
  readonly #scratch = Buffer.alloc(16)

  constructor (channel: IoChannel, tracker: RequestTracker, client: IoClient, exportId: number, readonly: boolean) {
    this.#channel = channel
    this.#tracker = tracker
    this.#client = client
    this.#exportId = exportId
    this.#readonly = readonly
    this.#size = client.sizeBigInt
    this.#sizeNumber = this.#size <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(this.#size) : -1
  }

  /** Bytes from `offset` to the end of the export, capped at `size` (0 past the end). */
  #clip (offset: number, size: number): number {
    if (this.#sizeNumber >= 0) return offset >= this.#sizeNumber ? 0 : Math.min(size, this.#sizeNumber - offset)
    const remaining = this.#size - BigInt(offset)
    return remaining <= 0n ? 0 : remaining < BigInt(size) ? Number(remaining) : size
  }

  read (request: Buffer, slot: number, unique: number, nodeid: number): void {
    const io = parseIoIn(request)
    this.#channel.release(slot)
    if (nodeid !== this.#exportId) {
      this.#channel.reply(unique, EISDIR)
      return
    }
    const length = this.#clip(io.offset, io.size)
    if (length === 0) {
      this.#channel.reply(unique, 0)
      return
    }
    const buffer = this.#pool.take(length)
    let replied = false
    this.#tracker.track(unique, false, () => this.#client.readInto(buffer, io.offset),
      () => {
        replied = true
        this.#channel.replyData(unique, buffer, () => { this.#pool.give(buffer) })
      },
      () => { if (!replied) this.#pool.give(buffer) })
  }

  write (request: Buffer, slot: number, unique: number, nodeid: number): void {
    const io = parseIoIn(request)
    if (nodeid !== this.#exportId || this.#readonly) {
      this.#channel.release(slot)
      this.#channel.reply(unique, nodeid !== this.#exportId ? EISDIR : ERRNO.EROFS)
      return
    }
    // A write that runs past the end lands up to the end; the caller sees a short write.
    const length = this.#clip(io.offset, io.size)
    if (length === 0) {
      this.#channel.release(slot)
      // Past the end of a fixed-size device: no space, as a block device says.
      this.#channel.reply(unique, ERRNO.ENOSPC)
      return
    }
    const data = request.subarray(IN_HEADER + WRITE_IN, IN_HEADER + WRITE_IN + length)
    this.#tracker.track(unique, true, (options) => this.#client.write(data, io.offset, options),
      () => { this.#channel.reply(unique, 0, encodeWriteOut(this.#scratch, length)) },
      () => { this.#channel.release(slot) })
  }

  fsync (unique: number): void {
    if (!this.#client.canFlush) {
      // No FLUSH advertised: the server has no volatile cache, writes are already durable.
      this.#channel.reply(unique, 0)
      return
    }
    this.#tracker.track(unique, true, (options) => this.#client.flush(options), () => { this.#channel.reply(unique, 0) })
  }

  fallocate (request: Buffer, unique: number): void {
    const { offset, length, mode } = parseFallocateIn(request)
    if (this.#readonly) {
      this.#channel.reply(unique, ERRNO.EROFS)
      return
    }
    const keepSize = (mode & FALLOC_FL.KEEP_SIZE) !== 0
    const start = BigInt(offset)
    const end = start + BigInt(length)
    const grows = end > this.#size && !keepSize
    const clipped = start >= this.#size ? 0 : Number((end < this.#size ? end : this.#size) - start)
    const reply = (): void => { this.#channel.reply(unique, 0) }
    switch (mode & ~FALLOC_FL.KEEP_SIZE) {
      case FALLOC_FL.PUNCH_HOLE:
        // The kernel sends PUNCH_HOLE only with KEEP_SIZE. The range must read back as zeroes
        // on every server, so not TRIM (a hint a server may ignore).
        if (clipped === 0) reply()
        else this.#tracker.track(unique, true, (options) => this.#client.punchHole(start, clipped, options), reply)
        return
      case FALLOC_FL.ZERO_RANGE:
        if (grows) this.#channel.reply(unique, ERRNO.ENOSPC)
        else if (clipped === 0) reply()
        else this.#tracker.track(unique, true, (options) => this.#client.writeZeroes(start, clipped, { ...options, noHole: true }), reply)
        return
      case 0:
        // Allocation: every byte of the export already exists; past the end there is no room.
        this.#channel.reply(unique, grows ? ERRNO.ENOSPC : 0)
        return
      default:
        this.#channel.reply(unique, ERRNO.EOPNOTSUPP)
    }
  }

  lseek (request: Buffer, unique: number): void {
    const { offset, whence } = parseLseekIn(request)
    if (whence !== SEEK_DATA && whence !== SEEK_HOLE) {
      this.#channel.reply(unique, ERRNO.EINVAL)
      return
    }
    if (BigInt(offset) >= this.#size) {
      this.#channel.reply(unique, ERRNO.ENXIO)
      return
    }
    if (!this.#client.metaContexts.includes(ALLOCATION)) {
      // Without allocation data, the whole export is data and the only hole is at the end.
      this.#channel.reply(unique, 0, encodeU64Out(this.#scratch, whence === SEEK_DATA ? offset : this.#size))
      return
    }
    this.#tracker.track(unique, true, (options) => this.#seek(offset, whence, options.signal), (result) => {
      if (result === null) this.#channel.reply(unique, ERRNO.ENXIO)
      else this.#channel.reply(unique, 0, encodeU64Out(this.#scratch, result))
    })
  }

  /**
   * SEEK_DATA: the first byte at or after `offset` that is not a hole. SEEK_HOLE: the first
   * byte in a hole (a range that is both unallocated and zero), or the end of the export.
   */
  async #seek (offset: number, whence: number, signal: AbortSignal | undefined): Promise<bigint | null> {
    const hole = NBD_STATE_HOLE | NBD_STATE_ZERO
    for await (const e of this.#client.map(offset, undefined, { context: ALLOCATION, bigint: true, ...(signal !== undefined && { signal }) })) {
      const isHole = (e.flags & hole) === hole
      if (whence === SEEK_DATA && !isHole) return e.offset
      if (whence === SEEK_HOLE && isHole) return e.offset
    }
    return whence === SEEK_DATA ? null : this.#size
  }
}
