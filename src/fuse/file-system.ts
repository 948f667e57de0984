/**
 * The dispatcher: one FUSE request in, its answer out. INIT, the node requests (LOOKUP,
 * GETATTR, OPEN, READDIR...) and everything small are answered here, synchronously, from the
 * node model (nodes.ts); READ, WRITE, FSYNC, FALLOCATE and LSEEK go to the I/O ops
 * (io-ops.ts), tracked for INTERRUPT (interrupts.ts); st_blocks comes from the allocation
 * count (allocation.ts).
 *
 *   device slot ──► handle() ──┬─ READ / WRITE ───────────► IoOps (slot released when done)
 *                              ├─ FSYNC FALLOCATE LSEEK ──► IoOps (slot released now)
 *                              ├─ INTERRUPT ──────────────► RequestTracker
 *                              └─ the rest ───────────────► answered here from ExportNodes
 */
import { constants } from 'node:os'
import type { NbdClient } from '../client/nbd-client.ts'
import {
  ATTR_OUT, ENTRY_OUT, FATTR, FOPEN_KEEP_CACHE, FOPEN_PARALLEL_DIRECT_WRITES, FUSE_INIT_FLAG, FUSE_KERNEL_VERSION,
  FUSE_MIN_MINOR, FUSE_OP, FUSE_OUR_MINOR, INIT_OUT, STATFS_OUT
} from './abi.ts'
import { AllocationCounter, type AllocationOptions } from './allocation.ts'
import type { FuseChannel } from './channel.ts'
import {
  emptyInHeader, encodeAttrOut, encodeDirents, encodeEntryOut, encodeInitOut, encodeOpenOut, encodeStatfsOut,
  parseInHeader, parseInitIn, parseInterruptIn, parseIoIn, parseName, parseOpenFlags, parseSetattrIn
} from './codec.ts'
import { ERRNO } from './errno.ts'
import { RequestTracker } from './interrupts.ts'
import { IoOps } from './io-ops.ts'
import type { LogFn } from './log.ts'
import { ExportNodes, type Access, type Layout } from './nodes.ts'

export interface FileSystemOptions {
  readonly client: NbdClient
  readonly layout: Layout
  readonly readonly: boolean
  /** Owner and mode of the export. */
  readonly access: Access
  /** Largest WRITE (and READ) we accept; negotiated as max_write / max_pages. */
  readonly maxWrite: number
  /** Let the kernel keep the page cache across opens (-o kernel_cache). */
  readonly keepCache?: boolean
  /**
   * st_blksize of the export (-o blksize=). @default maxWrite: cp copies in buffers of this
   * size, so each write(2) is one full FUSE WRITE instead of eight 128 KiB ones (bench/README.md).
   */
  readonly blksize?: number
  readonly log: LogFn
  readonly allocation?: AllocationOptions
}

export interface FuseStats {
  readonly requests: Record<string, number>
  readonly inFlight: number
  readonly errors: number
  readonly interrupted: number
  /** Requests answered EINTR because their caller was being killed (no INTERRUPT came). */
  readonly killed: number
}

const OP_NAMES = new Map<number, string>(Object.entries(FUSE_OP).map(([name, op]) => [op, name.toLowerCase()]))
/** How long the kernel may cache names and attributes, seconds. */
const ATTR_VALID = 1
const O_ACCMODE = 3
const O_RDONLY = 0
const O_TRUNC = 0o1000
const EISDIR = -constants.errno.EISDIR
const ENOTDIR = -constants.errno.ENOTDIR
const EACCES = -constants.errno.EACCES

export class ExportFileSystem {
  readonly #channel: FuseChannel
  readonly #options: FileSystemOptions
  readonly #nodes: ExportNodes
  readonly #tracker: RequestTracker
  readonly #io: IoOps
  readonly #allocation: AllocationCounter
  /** Reused for every request: nothing keeps it past handle(). */
  readonly #header = emptyInHeader()
  /** Scratch for small replies: writes are synchronous, so one of each kind serves all. */
  readonly #scratch = Buffer.alloc(Math.max(ENTRY_OUT, ATTR_OUT, INIT_OUT, STATFS_OUT))
  /** Requests by opcode; opcode 0 (none such) counts anything from 64 up (CUSE's). */
  readonly #counts = new Float64Array(64)
  #initialised = false
  /** Set when the kernel said DESTROY. */
  onDestroy: (() => void) | null = null
  readonly initialised: Promise<void>
  #markInitialised!: () => void

  constructor (channel: FuseChannel, options: FileSystemOptions) {
    this.#channel = channel
    this.#options = options
    const client = options.client
    this.#nodes = new ExportNodes(options.layout, options.access, options.readonly, client.sizeBigInt, options.blksize ?? options.maxWrite)
    this.#tracker = new RequestTracker(channel, options.log)
    // READs are at most max_pages pages (INIT below).
    this.#io = new IoOps(channel, this.#tracker, client, this.#nodes.exportId, options.readonly, options.log, Math.ceil(options.maxWrite / 4096) * 4096)
    this.#allocation = new AllocationCounter(client, options.log, options.allocation)
    this.initialised = new Promise((resolve) => { this.#markInitialised = resolve })
  }

  get stats (): FuseStats {
    const requests: Record<string, number> = {}
    this.#counts.forEach((n, op) => { if (n > 0) requests[OP_NAMES.get(op) ?? (op === 0 ? 'other' : `op${op}`)] = n })
    return { requests, inFlight: this.#tracker.inFlight, errors: this.#tracker.errors, interrupted: this.#tracker.interrupted, killed: this.#tracker.killed }
  }

  get allocation (): AllocationCounter {
    return this.#allocation
  }

  /** Resolves once no client request started by FUSE is pending. */
  idle (): Promise<void> {
    return this.#tracker.idle()
  }

  /** Lets go of what only a burst needs (the READ slab's pages). */
  trim (): void {
    this.#io.trim()
  }

  /** Stops background work (the allocation count); the READ slab's free pages go back. */
  close (): void {
    this.#allocation.close()
    this.#tracker.close()
    this.#io.trim()
  }

  /** Dispatches one request. `request` is a view of `slot`, released here or when done. */
  handle (request: Buffer, slot: number): void {
    const { opcode, unique, nodeid, length, pid } = parseInHeader(request, this.#header)
    this.#counts[opcode < 64 ? opcode : 0]!++
    this.#tracker.requester = pid
    try {
      switch (opcode) {
        case FUSE_OP.READ: return this.#io.read(request, slot, unique, nodeid)
        case FUSE_OP.WRITE: return this.#io.write(request, slot, unique, nodeid)
      }
      // Everything else is small: take what we need and give the slot back at once.
      try {
        this.#other(opcode, request, length, unique, nodeid)
      } finally {
        this.#channel.release(slot)
      }
    } catch (err) {
      // A bug here must cost one request, never the mount.
      this.#tracker.errors++
      this.#options.log('error', `FUSE opcode ${opcode} (request ${unique}) failed: ${(err as Error).stack ?? String(err)}`)
      this.#channel.reply(unique, ERRNO.EIO)
    }
  }

  #other (opcode: number, request: Buffer, length: number, unique: number, nodeid: number): void {
    const ch = this.#channel
    const nodes = this.#nodes
    switch (opcode) {
      case FUSE_OP.INIT: return this.#init(request, unique)
      case FUSE_OP.LOOKUP: {
        const found = nodes.lookup(nodeid, parseName(request, length))
        if (found === undefined) ch.reply(unique, ERRNO.ENOENT)
        else ch.reply(unique, 0, encodeEntryOut(this.#scratch, nodes.attributes(found, this.#allocation.blocks), ATTR_VALID))
        return
      }
      case FUSE_OP.GETATTR:
        if (!nodes.known(nodeid)) {
          ch.reply(unique, ERRNO.ENOENT)
          return
        }
        if (nodeid === nodes.exportId) this.#allocation.maybeRefresh()
        ch.reply(unique, 0, encodeAttrOut(this.#scratch, nodes.attributes(nodeid, this.#allocation.blocks), ATTR_VALID))
        return
      case FUSE_OP.SETATTR: return this.#setattr(request, unique, nodeid)
      case FUSE_OP.OPEN: {
        if (nodeid !== nodes.exportId) {
          ch.reply(unique, nodes.known(nodeid) ? EISDIR : ERRNO.ENOENT)
          return
        }
        const flags = parseOpenFlags(request)
        if (this.#options.readonly && (flags & O_ACCMODE) !== O_RDONLY) {
          ch.reply(unique, ERRNO.EROFS)
          return
        }
        const openFlags = FOPEN_PARALLEL_DIRECT_WRITES | (this.#options.keepCache === true ? FOPEN_KEEP_CACHE : 0)
        // O_TRUNC (negotiated as ATOMIC_O_TRUNC, so it comes here): the size stays (the server
        // fixes it) but the contents go, so that what a program assumes after it holds: the
        // file reads as zeroes (GNU cp skips the source's holes on that word).
        if ((flags & O_TRUNC) !== 0 && !this.#options.readonly) {
          this.#io.truncate(unique, () => { ch.reply(unique, 0, encodeOpenOut(this.#scratch, 0, openFlags)) })
          return
        }
        ch.reply(unique, 0, encodeOpenOut(this.#scratch, 0, openFlags))
        return
      }
      case FUSE_OP.OPENDIR:
        if (!nodes.isDirectory(nodeid)) ch.reply(unique, ENOTDIR)
        else ch.reply(unique, 0, encodeOpenOut(this.#scratch, 0, 0))
        return
      case FUSE_OP.READDIR: {
        if (!nodes.isDirectory(nodeid)) {
          ch.reply(unique, ENOTDIR)
          return
        }
        const io = parseIoIn(request)
        ch.reply(unique, 0, encodeDirents(nodes.entries(), Number(io.offset), io.size))
        return
      }
      case FUSE_OP.STATFS: {
        const blocks = Number(this.#options.client.sizeBigInt / 4096n)
        ch.reply(unique, 0, encodeStatfsOut(this.#scratch, { blocks, bfree: 0, files: nodes.fileCount, bsize: 4096 }))
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
      case FUSE_OP.CREATE:
      case FUSE_OP.MKNOD:
      case FUSE_OP.MKDIR:
      case FUSE_OP.SYMLINK:
      case FUSE_OP.LINK:
      case FUSE_OP.TMPFILE:
      case FUSE_OP.UNLINK:
      case FUSE_OP.RMDIR:
      case FUSE_OP.RENAME:
      case FUSE_OP.RENAME2:
        // The directory holds the export and nothing else, ever: no creating, removing or
        // renaming (ENOSYS would read "Function not implemented" and make the kernel retry
        // CREATE as MKNOD + OPEN).
        ch.reply(unique, EACCES)
        return
      case FUSE_OP.FSYNC: return this.#io.fsync(unique)
      case FUSE_OP.FALLOCATE: return this.#io.fallocate(request, unique)
      case FUSE_OP.LSEEK: return this.#io.lseek(request, unique)
      case FUSE_OP.INTERRUPT:
        this.#tracker.interrupt(parseInterruptIn(request), unique)
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
      FUSE_INIT_FLAG.ASYNC_DIO | FUSE_INIT_FLAG.PARALLEL_DIROPS | FUSE_INIT_FLAG.ATOMIC_O_TRUNC
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

  #setattr (request: Buffer, unique: number, nodeid: number): void {
    const nodes = this.#nodes
    if (!nodes.known(nodeid)) {
      this.#channel.reply(unique, ERRNO.ENOENT)
      return
    }
    const set = parseSetattrIn(request)
    if ((set.valid & FATTR.SIZE) !== 0 && (nodeid !== nodes.exportId || BigInt(set.size) !== this.#options.client.sizeBigInt)) {
      // The server fixes the size: truncate(1) cannot change it.
      this.#channel.reply(unique, ERRNO.EPERM)
      return
    }
    if ((set.valid & (FATTR.MODE | FATTR.UID | FATTR.GID)) !== 0) {
      this.#channel.reply(unique, ERRNO.EPERM)
      return
    }
    // Times (touch) are accepted and forgotten: the export has no timestamps.
    this.#channel.reply(unique, 0, encodeAttrOut(this.#scratch, nodes.attributes(nodeid, this.#allocation.blocks), ATTR_VALID))
  }
}
