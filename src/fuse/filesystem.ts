/**
 * A filesystem of one file: the export. Mounted over a regular file, the root node is the
 * file; mounted on a directory, the root is that directory and the export is its only entry.
 *
 *   file layout   nodeid 1 = the export (S_IFREG)
 *   dir layout    nodeid 1 = directory ─── "disk" ──► nodeid 2 = the export
 *
 * Each FUSE request is handled as it arrives; READ, WRITE, FSYNC, FALLOCATE and LSEEK become
 * client requests, so many run at once, bounded by the client's request slots. READ slots are
 * freed as soon as the request is parsed; a WRITE keeps its slot until its data has been sent
 * (the payload is a view of the slot, never copied).
 */
import { constants } from 'node:os'
import type { NbdClient } from '../client/nbd-client.ts'
import { NBD_FLAG, NBD_STATE_HOLE, NBD_STATE_ZERO } from '../protocol/constants.ts'
import {
  ATTR_OUT, DT_DIR, DT_REG, ENTRY_OUT, FALLOC_FL, FATTR, FOPEN_PARALLEL_DIRECT_WRITES, FUSE_INIT_FLAG,
  FUSE_KERNEL_VERSION, FUSE_MIN_MINOR, FUSE_OP, FUSE_OUR_MINOR, FUSE_ROOT_ID, INIT_OUT, IN_HEADER, SEEK_DATA,
  SEEK_HOLE, STATFS_OUT, S_IFDIR, S_IFREG, WRITE_IN
} from './abi.ts'
import {
  encodeAttrOut, encodeDirents, encodeEntryOut, encodeInitOut, encodeOpenOut, encodeStatfsOut, encodeU64Out,
  encodeWriteOut, parseFallocateIn, parseInitIn, parseIoIn, parseLseekIn, parseName, parseOpenFlags, parseSetattrIn,
  u64, type Attributes, type DirEntry
} from './codec.ts'
import type { FuseChannel } from './channel.ts'
import { ERRNO, errnoOf } from './errno.ts'
import { BufferPool } from './buffer-pool.ts'

export type Layout = { readonly kind: 'file' } | { readonly kind: 'dir', readonly name: string }
export type LogFn = (level: 'debug' | 'info' | 'warn' | 'error', message: string) => void

export interface FileSystemOptions {
  readonly client: NbdClient
  readonly layout: Layout
  readonly readonly: boolean
  readonly uid: number
  readonly gid: number
  /** Largest WRITE (and READ) we accept; negotiated as max_write / max_pages. */
  readonly maxWrite: number
  readonly log: LogFn
}

const EXPORT_ID = 2
const OP_NAMES = new Map<number, string>(Object.entries(FUSE_OP).map(([name, op]) => [op, name.toLowerCase()]))
/** How long the kernel may cache names and attributes, seconds. */
const ATTR_VALID = 1
const O_ACCMODE = 3
const O_RDONLY = 0

/** A FUSE request whose client request is under way. */
interface Pending {
  /** For the requests INTERRUPT aborts. */
  readonly controller: AbortController | null
  /** Answered early (EINTR); the client request's outcome is dropped. */
  answered: boolean
}

export interface FuseStats {
  readonly requests: Record<string, number>
  readonly inFlight: number
  readonly errors: number
  readonly interrupted: number
}

export class ExportFileSystem {
  readonly #channel: FuseChannel
  readonly #options: FileSystemOptions
  readonly #client: NbdClient
  readonly #exportId: number
  readonly #size: number | bigint
  readonly #sizeBig: bigint
  readonly #time = Math.floor(Date.now() / 1000)
  readonly #pool = new BufferPool()
  /** Scratch for small replies: writes are synchronous, so one of each kind serves all. */
  readonly #scratch = Buffer.alloc(Math.max(ENTRY_OUT, ATTR_OUT, INIT_OUT, STATFS_OUT))
  /** In-flight requests, by FUSE unique (for INTERRUPT, and to know when all are done). */
  readonly #pending = new Map<number, Pending>()
  readonly #counts: Record<string, number> = {}
  #errors = 0
  #interrupted = 0
  #idleWaiters: Array<() => void> = []
  /** 512-byte blocks allocated, from block status; refreshed in the background. */
  #blocks: bigint
  #blocksAt = 0
  #blocksRefresh: Promise<void> | null = null
  #initialised = false
  /** Set when the kernel said DESTROY. */
  onDestroy: (() => void) | null = null
  readonly initialised: Promise<void>
  #markInitialised!: () => void

  constructor (channel: FuseChannel, options: FileSystemOptions) {
    this.#channel = channel
    this.#options = options
    this.#client = options.client
    this.#exportId = options.layout.kind === 'file' ? FUSE_ROOT_ID : EXPORT_ID
    this.#sizeBig = options.client.sizeBigInt
    this.#size = this.#sizeBig <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(this.#sizeBig) : this.#sizeBig
    this.#blocks = (this.#sizeBig + 511n) / 512n
    this.initialised = new Promise((resolve) => { this.#markInitialised = resolve })
  }

  get stats (): FuseStats {
    return { requests: { ...this.#counts }, inFlight: this.#pending.size, errors: this.#errors, interrupted: this.#interrupted }
  }

  /** Resolves once no client request started by FUSE is pending. */
  idle (): Promise<void> {
    if (this.#pending.size === 0) return Promise.resolve()
    return new Promise((resolve) => { this.#idleWaiters.push(resolve) })
  }

  /**
   * Counts allocated blocks (st_blocks) from block status, within a time budget: an export
   * whose map takes longer than that to walk keeps reporting every block as allocated.
   */
  async refreshAllocation (budgetMs = 2000): Promise<void> {
    if (!this.#client.metaContexts.includes('base:allocation')) return
    const deadline = Date.now() + budgetMs
    let data = 0n
    for await (const e of this.#client.map(0, undefined, { bigint: true })) {
      if ((e.flags & NBD_STATE_HOLE) === 0) data += BigInt(e.length)
      if (Date.now() > deadline) return
    }
    this.#blocks = (data + 511n) / 512n
    this.#blocksAt = Date.now()
  }

  /** Dispatches one request. `request` is a view of `slot`, released here or when done. */
  handle (request: Buffer, slot: number): void {
    const opcode = request.readUInt32LE(4)
    const unique = u64(request, 8)
    const nodeid = u64(request, 16)
    const length = request.readUInt32LE(0)
    const name = OP_NAMES.get(opcode) ?? `op${opcode}`
    this.#counts[name] = (this.#counts[name] ?? 0) + 1
    try {
      switch (opcode) {
        case FUSE_OP.READ: return this.#read(request, slot, unique, nodeid)
        case FUSE_OP.WRITE: return this.#write(request, slot, unique, nodeid)
      }
      // Everything else is small: take what we need and give the slot back at once.
      try {
        this.#other(opcode, request, length, unique, nodeid)
      } finally {
        this.#channel.release(slot)
      }
    } catch (err) {
      // A bug here must cost one request, never the mount.
      this.#errors++
      this.#options.log('error', `FUSE opcode ${opcode} (request ${unique}) failed: ${(err as Error).stack ?? String(err)}`)
      this.#channel.reply(unique, ERRNO.EIO)
    }
  }

  #other (opcode: number, request: Buffer, length: number, unique: number, nodeid: number): void {
    const ch = this.#channel
    switch (opcode) {
      case FUSE_OP.INIT: return this.#init(request, unique)
      case FUSE_OP.LOOKUP: {
        const name = parseName(request, length)
        if (nodeid !== FUSE_ROOT_ID || this.#options.layout.kind !== 'dir' || name !== this.#options.layout.name) {
          ch.reply(unique, ERRNO.ENOENT)
          return
        }
        ch.reply(unique, 0, encodeEntryOut(this.#scratch, this.#attributes(EXPORT_ID), ATTR_VALID))
        return
      }
      case FUSE_OP.GETATTR:
        if (!this.#known(nodeid)) {
          ch.reply(unique, ERRNO.ENOENT)
          return
        }
        if (nodeid === this.#exportId) this.#maybeRefreshAllocation()
        ch.reply(unique, 0, encodeAttrOut(this.#scratch, this.#attributes(nodeid), ATTR_VALID))
        return
      case FUSE_OP.SETATTR: return this.#setattr(request, unique, nodeid)
      case FUSE_OP.OPEN: {
        if (nodeid !== this.#exportId) {
          ch.reply(unique, this.#known(nodeid) ? -constants.errno.EISDIR : ERRNO.ENOENT)
          return
        }
        const flags = parseOpenFlags(request)
        if (this.#options.readonly && (flags & O_ACCMODE) !== O_RDONLY) {
          ch.reply(unique, ERRNO.EROFS)
          return
        }
        // O_TRUNC is not passed on: the export's size is fixed (a block device ignores it too).
        ch.reply(unique, 0, encodeOpenOut(this.#scratch, 0, FOPEN_PARALLEL_DIRECT_WRITES))
        return
      }
      case FUSE_OP.OPENDIR:
        if (nodeid !== FUSE_ROOT_ID || this.#options.layout.kind !== 'dir') ch.reply(unique, -constants.errno.ENOTDIR)
        else ch.reply(unique, 0, encodeOpenOut(this.#scratch, 0, 0))
        return
      case FUSE_OP.READDIR: {
        if (this.#options.layout.kind !== 'dir') {
          ch.reply(unique, -constants.errno.ENOTDIR)
          return
        }
        const io = parseIoIn(request)
        const entries: DirEntry[] = [
          { ino: FUSE_ROOT_ID, name: '.', type: DT_DIR },
          { ino: FUSE_ROOT_ID, name: '..', type: DT_DIR },
          { ino: EXPORT_ID, name: this.#options.layout.name, type: DT_REG }
        ]
        ch.reply(unique, 0, encodeDirents(entries, io.offset, io.size))
        return
      }
      case FUSE_OP.STATFS: {
        const blocks = Number(this.#sizeBig / 4096n)
        ch.reply(unique, 0, encodeStatfsOut(this.#scratch, { blocks, bfree: 0, files: this.#options.layout.kind === 'dir' ? 2 : 1, bsize: 4096 }))
        return
      }
      case FUSE_OP.RELEASE:
      case FUSE_OP.RELEASEDIR:
      case FUSE_OP.FSYNCDIR:
        ch.reply(unique, 0)
        return
      case FUSE_OP.FLUSH:
        // close(2): nothing is cached here (writes go through), so nothing to do.
        ch.reply(unique, 0)
        return
      case FUSE_OP.FSYNC: return this.#fsync(unique)
      case FUSE_OP.FALLOCATE: return this.#fallocate(request, unique)
      case FUSE_OP.LSEEK: return this.#lseek(request, unique)
      case FUSE_OP.INTERRUPT:
        this.#interrupt(u64(request, IN_HEADER), unique)
        return
      case FUSE_OP.FORGET:
      case FUSE_OP.BATCH_FORGET:
        // Our nodes live as long as the mount: nothing to forget, and no reply.
        return
      case FUSE_OP.DESTROY:
        ch.reply(unique, 0)
        this.onDestroy?.()
        return
      default:
        // GETXATTR, LISTXATTR, ACCESS...: ENOSYS makes the kernel stop asking.
        ch.reply(unique, ERRNO.ENOSYS)
    }
  }

  #init (request: Buffer, unique: number): void {
    const init = parseInitIn(request)
    if (init.major !== FUSE_KERNEL_VERSION || init.minor < FUSE_MIN_MINOR) {
      this.#options.log('error', `kernel FUSE protocol ${init.major}.${init.minor} is too old (need ${FUSE_KERNEL_VERSION}.${FUSE_MIN_MINOR})`)
      this.#channel.reply(unique, ERRNO.EPROTO)
      return
    }
    const wanted = FUSE_INIT_FLAG.ASYNC_READ | FUSE_INIT_FLAG.BIG_WRITES | FUSE_INIT_FLAG.MAX_PAGES |
      FUSE_INIT_FLAG.ASYNC_DIO | FUSE_INIT_FLAG.PARALLEL_DIROPS
    const maxWrite = this.#options.maxWrite
    this.#channel.reply(unique, 0, encodeInitOut(this.#scratch, {
      major: FUSE_KERNEL_VERSION,
      minor: Math.min(init.minor, FUSE_OUR_MINOR),
      maxReadahead: Math.min(init.maxReadahead, maxWrite),
      flags: init.flags & wanted,
      // Async reads and direct I/O count as background requests: let many be in flight.
      maxBackground: 256,
      congestionThreshold: 192,
      maxWrite,
      maxPages: Math.ceil(maxWrite / 4096)
    }))
    this.#options.log('info', `FUSE ${init.major}.${init.minor}, replying ${FUSE_KERNEL_VERSION}.${Math.min(init.minor, FUSE_OUR_MINOR)}, max_write ${maxWrite}`)
    if (!this.#initialised) {
      this.#initialised = true
      this.#markInitialised()
    }
  }

  #known (nodeid: number): boolean {
    return nodeid === FUSE_ROOT_ID || (this.#options.layout.kind === 'dir' && nodeid === EXPORT_ID)
  }

  #attributes (nodeid: number): Attributes {
    const base = { uid: this.#options.uid, gid: this.#options.gid, time: this.#time, blksize: 4096 }
    if (nodeid === this.#exportId) {
      const mode = S_IFREG | (this.#options.readonly ? 0o444 : 0o644)
      return { ...base, ino: nodeid, size: this.#size, blocks: this.#blocks, mode, nlink: 1 }
    }
    return { ...base, ino: nodeid, size: 4096, blocks: 8, mode: S_IFDIR | 0o755, nlink: 2 }
  }

  #maybeRefreshAllocation (): void {
    if (this.#blocksRefresh !== null || Date.now() - this.#blocksAt < 1000) return
    this.#blocksRefresh = this.refreshAllocation().catch((err: unknown) => {
      this.#options.log('debug', `allocation refresh failed: ${String(err)}`)
    }).finally(() => { this.#blocksRefresh = null })
  }

  #setattr (request: Buffer, unique: number, nodeid: number): void {
    if (!this.#known(nodeid)) {
      this.#channel.reply(unique, ERRNO.ENOENT)
      return
    }
    const set = parseSetattrIn(request)
    const isExport = nodeid === this.#exportId
    if ((set.valid & FATTR.SIZE) !== 0 && (!isExport || BigInt(set.size) !== this.#sizeBig)) {
      // The server fixes the size; truncate(1) and O_TRUNC cannot change it.
      this.#channel.reply(unique, ERRNO.EPERM)
      return
    }
    if ((set.valid & (FATTR.MODE | FATTR.UID | FATTR.GID)) !== 0) {
      this.#channel.reply(unique, ERRNO.EPERM)
      return
    }
    // Times (touch) are accepted and forgotten: the export has no timestamps.
    this.#channel.reply(unique, 0, encodeAttrOut(this.#scratch, this.#attributes(nodeid), ATTR_VALID))
  }

  /**
   * Runs the client request for FUSE request `unique`; `after` runs once it has settled,
   * replied or not (buffers are released there).
   *
   * INTERRUPT: a request started by #trackCancellable (FSYNC, FALLOCATE, LSEEK, which the
   * kernel sends synchronously and may wait long for) has its NBD request aborted, which
   * answers EINTR. READ and WRITE skip the AbortController, a tenth of their cost at 40k
   * requests a second: an interrupt answers EINTR at once and the NBD request finishes
   * unobserved, keeping its buffer until then (an interrupted write may land, as it may with
   * an abort once it is on the wire).
   */
  #track<T> (unique: number, run: () => Promise<T>, done: (result: T) => void, after?: () => void,
    controller: AbortController | null = null): void {
    const pending: Pending = { controller, answered: false }
    this.#pending.set(unique, pending)
    run().then(
      (result) => { if (!pending.answered) done(result) },
      (err: unknown) => {
        if (pending.answered) return
        this.#errors++
        const errno = errnoOf(err)
        if (errno !== ERRNO.EINTR) this.#options.log('debug', `request ${unique} failed: ${String(err)}`)
        this.#channel.reply(unique, errno)
      }
    ).finally(() => {
      this.#pending.delete(unique)
      after?.()
      if (this.#pending.size === 0) {
        const waiters = this.#idleWaiters
        this.#idleWaiters = []
        for (const w of waiters) w()
      }
    })
  }

  /** #track for the requests INTERRUPT aborts. */
  #trackCancellable<T> (unique: number, run: (signal: AbortSignal) => Promise<T>, done: (result: T) => void): void {
    const controller = new AbortController()
    this.#track(unique, () => run(controller.signal), done, undefined, controller)
  }

  #interrupt (target: number, unique: number): void {
    const pending = this.#pending.get(target)
    if (pending === undefined || pending.answered) {
      // Already answered (or not read yet): the kernel re-sends the interrupt after EAGAIN.
      this.#channel.reply(unique, ERRNO.EAGAIN)
      return
    }
    this.#interrupted++
    if (pending.controller !== null) {
      pending.controller.abort(new Error(`interrupted by the kernel (FUSE request ${target})`))
      return
    }
    pending.answered = true
    this.#channel.reply(target, ERRNO.EINTR)
  }

  #read (request: Buffer, slot: number, unique: number, nodeid: number): void {
    const io = parseIoIn(request)
    this.#channel.release(slot)
    if (nodeid !== this.#exportId) {
      this.#channel.reply(unique, -constants.errno.EISDIR)
      return
    }
    const remaining = this.#sizeBig - BigInt(io.offset)
    if (remaining <= 0n) {
      this.#channel.reply(unique, 0)
      return
    }
    const length = remaining < BigInt(io.size) ? Number(remaining) : io.size
    const buffer = this.#pool.take(length)
    let replied = false
    this.#track(unique, () => this.#client.readInto(buffer, io.offset),
      () => {
        replied = true
        this.#channel.replyData(unique, buffer, () => { this.#pool.give(buffer) })
      },
      () => { if (!replied) this.#pool.give(buffer) })
  }

  #write (request: Buffer, slot: number, unique: number, nodeid: number): void {
    const io = parseIoIn(request)
    if (nodeid !== this.#exportId) {
      this.#channel.release(slot)
      this.#channel.reply(unique, -constants.errno.EISDIR)
      return
    }
    if (this.#options.readonly) {
      this.#channel.release(slot)
      this.#channel.reply(unique, ERRNO.EROFS)
      return
    }
    const remaining = this.#sizeBig - BigInt(io.offset)
    if (remaining <= 0n) {
      this.#channel.release(slot)
      // Past the end of a fixed-size device: no space, as a block device says.
      this.#channel.reply(unique, ERRNO.ENOSPC)
      return
    }
    // A write that runs past the end lands up to the end; the caller sees a short write.
    const length = remaining < BigInt(io.size) ? Number(remaining) : io.size
    const data = request.subarray(IN_HEADER + WRITE_IN, IN_HEADER + WRITE_IN + length)
    this.#track(unique, () => this.#client.write(data, io.offset),
      () => { this.#channel.reply(unique, 0, encodeWriteOut(this.#scratch, length)) },
      () => { this.#channel.release(slot) })
  }

  #fsync (unique: number): void {
    if ((this.#client.info.flags & NBD_FLAG.SEND_FLUSH) === 0) {
      // No FLUSH advertised: the server has no volatile cache, writes are already durable.
      this.#channel.reply(unique, 0)
      return
    }
    this.#trackCancellable(unique, (signal) => this.#client.flush({ signal }), () => { this.#channel.reply(unique, 0) })
  }

  #fallocate (request: Buffer, unique: number): void {
    const { offset, length, mode } = parseFallocateIn(request)
    if (this.#options.readonly) {
      this.#channel.reply(unique, ERRNO.EROFS)
      return
    }
    const end = BigInt(offset) + BigInt(length)
    const punch = FALLOC_FL.PUNCH_HOLE | FALLOC_FL.KEEP_SIZE
    if (mode === punch || mode === FALLOC_FL.ZERO_RANGE || mode === (FALLOC_FL.ZERO_RANGE | FALLOC_FL.KEEP_SIZE)) {
      if (end > this.#sizeBig) {
        this.#channel.reply(unique, mode === punch ? ERRNO.EINVAL : ERRNO.ENOSPC)
        return
      }
      const run = mode === punch
        // PUNCH_HOLE → TRIM. Partial blocks at the ends are not discarded by TRIM, so they are
        // zeroed explicitly: a punched range must read back as zeroes.
        ? (signal: AbortSignal) => this.#punch(offset, length, signal)
        : (signal: AbortSignal) => this.#client.writeZeroes(offset, length, { noHole: true, signal })
      this.#trackCancellable(unique, run, () => { this.#channel.reply(unique, 0) })
      return
    }
    if (mode === 0 || mode === FALLOC_FL.KEEP_SIZE) {
      // Allocation: every byte of the export already exists; past the end there is no room.
      this.#channel.reply(unique, end > this.#sizeBig && mode === 0 ? ERRNO.ENOSPC : 0)
      return
    }
    this.#channel.reply(unique, ERRNO.EOPNOTSUPP)
  }

  /** TRIM the whole blocks of the range; zero the partial blocks at its ends, if any. */
  async #punch (offset: number, length: number, signal: AbortSignal): Promise<void> {
    const min = this.#client.minBlockSize
    const end = offset + length
    const first = Math.ceil(offset / min) * min
    const last = Math.floor(end / min) * min
    if ((this.#client.info.flags & NBD_FLAG.SEND_TRIM) === 0 || last <= first) {
      await this.#client.writeZeroes(offset, length, { signal })
      return
    }
    const work = [this.#client.trim(first, last - first, { signal })]
    if (first > offset) work.push(this.#client.writeZeroes(offset, first - offset, { signal }))
    if (end > last) work.push(this.#client.writeZeroes(last, end - last, { signal }))
    await Promise.all(work)
  }

  #lseek (request: Buffer, unique: number): void {
    const { offset, whence } = parseLseekIn(request)
    if (whence !== SEEK_DATA && whence !== SEEK_HOLE) {
      this.#channel.reply(unique, ERRNO.EINVAL)
      return
    }
    if (BigInt(offset) >= this.#sizeBig) {
      this.#channel.reply(unique, ERRNO.ENXIO)
      return
    }
    if (!this.#client.metaContexts.includes('base:allocation')) {
      // Without allocation data, the whole export is data and the only hole is at the end.
      this.#channel.reply(unique, 0, encodeU64Out(this.#scratch, whence === SEEK_DATA ? offset : this.#size))
      return
    }
    this.#trackCancellable(unique, (signal) => this.#seek(offset, whence, signal), (result) => {
      if (result === null) this.#channel.reply(unique, ERRNO.ENXIO)
      else this.#channel.reply(unique, 0, encodeU64Out(this.#scratch, result))
    })
  }

  /**
   * SEEK_DATA: the first byte at or after `offset` that is not a hole. SEEK_HOLE: the first
   * byte in a hole (a range that is both unallocated and zero), or the end of the export.
   */
  async #seek (offset: number, whence: number, signal: AbortSignal): Promise<bigint | null> {
    const hole = NBD_STATE_HOLE | NBD_STATE_ZERO
    for await (const e of this.#client.map(offset, undefined, { signal, bigint: true })) {
      const isHole = (e.flags & hole) === hole
      if (whence === SEEK_DATA && !isHole) return e.offset
      if (whence === SEEK_HOLE && isHole) return e.offset
    }
    return whence === SEEK_DATA ? null : this.#sizeBig
  }
}
