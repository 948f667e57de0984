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
import type { FuseChannel } from './channel.ts'
import { encodeU64Out, encodeWriteOut, parseFallocateIn, parseIoIn, parseLseekIn } from './codec.ts'
import { ERRNO } from './errno.ts'
import type { RequestTracker } from './interrupts.ts'
import type { LogFn } from './log.ts'
import { ReadSlab } from './read-slab.ts'

export type IoChannel = Pick<FuseChannel, 'reply' | 'replyData' | 'release'>
type IoClient = Pick<NbdClient, 'sizeBigInt' | 'readInto' | 'write' | 'flush' | 'punchHole' | 'writeZeroes' | 'blockStatus' | 'metaContexts' | 'canFlush' | 'canZero'> &
  Partial<Pick<NbdClient, 'maxInFlight' | 'connections'>>

const EISDIR = -constants.errno.EISDIR
const ALLOCATION = 'base:allocation'
/**
 * READ slab slots: the reads the client can have on the wire (maxInFlight × connections; a
 * stand-in client without them: 16), within these bounds. Reads past it wait in the client's
 * queue with a heap buffer.
 */
const SLAB_MIN = 16
const SLAB_MAX = 256
/** The most one block-status request asks about: a u32 length, block-aligned. */
const SEEK_STEP = 0xffff_f000n

export class IoOps {
  readonly #channel: IoChannel
  readonly #tracker: RequestTracker
  readonly #client: IoClient
  readonly #exportId: number
  readonly #readonly: boolean
  readonly #log: LogFn
  readonly #size: bigint
  /** The size as a number when it is exact (every export below 8 PiB), else -1. */
  readonly #sizeNumber: number
  readonly #slab: ReadSlab
  /** Scratch for small replies: replies are written synchronously, so one serves all. */
  readonly #scratch = Buffer.alloc(16)

  /** `maxRead`: the largest READ the kernel sends (max_pages × 4 KiB), a slab slot's size. */
  constructor (channel: IoChannel, tracker: RequestTracker, client: IoClient, exportId: number, readonly: boolean, log: LogFn, maxRead = 1 << 20) {
    this.#channel = channel
    this.#log = log
    this.#tracker = tracker
    this.#client = client
    this.#exportId = exportId
    this.#readonly = readonly
    this.#size = client.sizeBigInt
    this.#sizeNumber = this.#size <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(this.#size) : -1
    const inFlight = (client.maxInFlight ?? SLAB_MIN) * (client.connections ?? 1)
    this.#slab = new ReadSlab(Math.min(SLAB_MAX, Math.max(SLAB_MIN, inFlight)), maxRead)
  }

  /** Bytes from `offset` to the end of the export, capped at `size` (0 past the end). */
  #clip (offset: number | bigint, size: number): number {
    if (this.#sizeNumber >= 0 && typeof offset === 'number') return offset >= this.#sizeNumber ? 0 : Math.min(size, this.#sizeNumber - offset)
    const remaining = this.#size - BigInt(offset)
    return remaining <= 0n ? 0 : remaining < BigInt(size) ? Number(remaining) : size
  }

  /**
   * Gives the pages of the free READ buffers back: idle after a burst, and when the mount goes
   * (the mapping itself stays: a READ still on the wire may write into it).
   */
  trim (): void {
    this.#slab.trim()
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
    const slab = this.#slab
    const taken = slab.take(length)
    const buffer = slab.view(taken, length)
    let replied = false
    this.#tracker.track(unique, false, () => this.#client.readInto(buffer, io.offset),
      () => {
        replied = true
        this.#channel.replyData(unique, buffer, () => { slab.give(taken) })
      },
      () => { if (!replied) slab.give(taken) })
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
    // Exact over the whole u64 range: offsets and lengths stay bigints until the client.
    const start = offset
    const end = start + length
    const grows = end > this.#size && !keepSize
    const clipped = start >= this.#size ? 0n : (end < this.#size ? end : this.#size) - start
    const reply = (): void => { this.#channel.reply(unique, 0) }
    switch (mode & ~FALLOC_FL.KEEP_SIZE) {
      case FALLOC_FL.PUNCH_HOLE:
        // The kernel sends PUNCH_HOLE only with KEEP_SIZE. The range must read back as zeroes
        // on every server, so not TRIM (a hint a server may ignore).
        if (clipped === 0n) reply()
        else this.#tracker.track(unique, true, (options) => zeroRange(start, clipped, (at, n) => this.#client.punchHole(n, at, options)), reply)
        return
      case FALLOC_FL.ZERO_RANGE:
        if (grows) this.#channel.reply(unique, ERRNO.ENOSPC)
        else if (clipped === 0n) reply()
        else this.#tracker.track(unique, true, (options) => zeroRange(start, clipped, (at, n) => this.#client.writeZeroes(n, at, { ...options, noHole: true })), reply)
        return
      case 0:
        // Allocation: every byte of the export already exists; past the end there is no room.
        this.#channel.reply(unique, grows ? ERRNO.ENOSPC : 0)
        return
      default:
        this.#channel.reply(unique, ERRNO.EOPNOTSUPP)
    }
  }

  /**
   * OPEN with O_TRUNC: a program may then assume the file reads as zeroes (cp skips the
   * source's holes on that word), and the export cannot shrink, so the whole export is zeroed
   * before the open succeeds: WRITE_ZEROES that may punch (seconds for a large export on
   * servers that punch or zero fast; where the server has no WRITE_ZEROES, the client writes
   * the zeroes: the whole size goes over the wire). An interrupted open fails with EINTR.
   */
  truncate (unique: number, opened: () => void): void {
    const started = performance.now()
    this.#log('info', `O_TRUNC: zeroing the whole export (${this.#size} bytes${this.#client.canZero ? '' : ', written as zeroes: the server has no WRITE_ZEROES'})`)
    this.#tracker.track(unique, true, (options) => zeroRange(0n, this.#size, (at, n) => this.#client.punchHole(n, at, options)), () => {
      this.#log('info', `O_TRUNC: zeroed in ${Math.round(performance.now() - started)} ms`)
      opened()
    })
  }

  lseek (request: Buffer, unique: number): void {
    const { offset, whence } = parseLseekIn(request)
    if (whence !== SEEK_DATA && whence !== SEEK_HOLE) {
      this.#channel.reply(unique, ERRNO.EINVAL)
      return
    }
    if (offset >= this.#size) {
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
   * Asked one block-status request at a time, answered at the first match (map() would merge
   * the run that follows: on an export of 2^60 bytes, a quarter-billion requests).
   */
  async #seek (offset: bigint, whence: number, signal: AbortSignal | undefined): Promise<bigint | null> {
    const hole = NBD_STATE_HOLE | NBD_STATE_ZERO
    for (let at = offset; at < this.#size;) {
      const ask = this.#size - at < SEEK_STEP ? Number(this.#size - at) : Number(SEEK_STEP)
      const status = await this.#client.blockStatus(ask, at, { bigint: true, ...(signal !== undefined && { signal }) })
      const extents = status.get(ALLOCATION) ?? []
      const before = at
      for (const e of extents) {
        const isHole = (e.flags & hole) === hole
        if (whence === SEEK_DATA && !isHole) return e.offset > offset ? e.offset : offset
        if (whence === SEEK_HOLE && isHole) return e.offset > offset ? e.offset : offset
        at = e.offset + BigInt(e.length)
      }
      if (at <= before) throw new Error(`block status at ${before} described nothing`)
    }
    return whence === SEEK_DATA ? null : this.#size
  }
}

/** The client takes lengths as exact numbers: a range longer than 2^52 goes in pieces. */
const ZERO_PIECE = 2n ** 52n

async function zeroRange (start: bigint, length: bigint, zero: (at: bigint, n: number) => Promise<void>): Promise<void> {
  for (let at = start, left = length; left > 0n;) {
    const n = left < ZERO_PIECE ? left : ZERO_PIECE
    await zero(at, Number(n))
    at += n
    left -= n
  }
}
