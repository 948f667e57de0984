/**
 * Allocation-free socket reads, and reads straight into the caller's buffer. Node normally
 * allocates a fresh 64 KiB buffer for every read() on a socket; with `onread` the socket reads
 * into buffers we hand it instead. The hook is created with the socket (onread must be given to
 * net.connect) and the reader attaches to it once the socket is open.
 *
 * Which buffer the next read() fills, and how much it may take, is decided after each read
 * (Node asks the `buffer` function then), so it is one of:
 *
 *   pool view    ── headers, small payloads: as many bytes as the reader's readSize() allows
 *                   (a whole pool buffer, or while large READs are in flight just a header)
 *   lent view    ── the reader is in the middle of a large payload: the rest of it, in the
 *                   destination itself (no copy: QEMU's and libnbd's recv into the iovec)
 *
 * A short read into a lent view is followed at once by more reads of our own (read(2) on the
 * socket's descriptor, in the same callback) until the view is full or the socket is empty, as
 * QEMU's receive loop does, rather than a return to epoll per piece the server could send.
 *
 * A lent view stays with the socket until the next read, so whoever is about to drop the
 * destination (an aborted request, a dead reader) first calls reclaim(), which hands the socket
 * a pool view instead; refresh() re-decides the same way when the reader's readSize() shrank.
 * The bytes of a read always land in what we last lent (`#lent`), which we track ourselves:
 * Node's callback argument goes stale after a reclaim.
 *
 * Giving the socket a buffer: from a read callback, by returning it (Node installs it once the
 * callback's tick is over); anywhere else (reclaim, refresh), with the handle's
 * useUserBuffer(), which costs a native listener object that lives as long as the socket
 * (Node 20 pushes one per call and frees them at close), so it is never called per read.
 * Node skips installing a returned buffer when anything queued for that tick throws (any
 * code's nextTick, an unhandled rejection): the next read would still go into the previous
 * buffer while we read from this one, silently wrong bytes. Such a throw is always an uncaught
 * exception, so an 'uncaughtExceptionMonitor' listener installs `#lent` on every open socket
 * before the next read can happen.
 *
 * Pool buffers: the reader counts, per pool buffer, the buffered chunks that are views of it
 * (`refs`). Reads fill a pool buffer front to back (`#used`): a read goes after the bytes the
 * last reads left there, and starts over at the front once no chunk refers to the buffer any
 * more. When what is left of it is too small, the next pool buffer is one whose count is zero;
 * only when every pooled buffer still holds unconsumed bytes is another one allocated. Views
 * handed to consumers outside the chunk list are used synchronously (before the event loop
 * reads again), so reuse never overwrites bytes someone still needs.
 */
import { readSync } from 'node:fs'
import type { Socket } from 'node:net'

export const READ_BUFFER_SIZE = 256 * 1024
/** The most bytes one read callback reads on (see #readOn). */
const READ_ON_MAX = 4 * 1024 * 1024
/** Not under frozen intrinsics (a lockdown), where assigning Error.stackTraceLimit throws. */
const canTrimStacks = Object.getOwnPropertyDescriptor(Error, 'stackTraceLimit')?.writable === true
const POOL_LIMIT = 8

export class PooledBuffer {
  readonly buf: Buffer
  /** Buffered chunks that are views of this buffer. */
  refs = 0
  constructor (size: number) {
    this.buf = Buffer.allocUnsafe(size)
  }
}

export interface ReadSink {
  /** Bytes arrived in `view`, a view of `source`; only valid while source.refs counts it. */
  onBytes: (view: Buffer, source: PooledBuffer) => void
  /** `n` bytes arrived straight in the view lend() returned last. */
  onDirect: (n: number) => void
  /** Where the next read should go, when that is a caller's buffer; undefined for the pool. */
  lend: () => Buffer | undefined
  /** The most bytes the next read into the pool should take (capped at READ_BUFFER_SIZE). */
  readSize: () => number
}

/** The part of Node's stream handle we use (StreamBase::UseUserBuffer, behind net's onread). */
interface UserBufferHandle {
  useUserBuffer?: (buf: Uint8Array) => void
}

const hooks = new WeakMap<object, ReadHook>()

export class ReadHook {
  readonly #pool: PooledBuffer[] = [new PooledBuffer(READ_BUFFER_SIZE)]
  #current = this.#pool[0]!
  /** Bytes at the front of #current that reads since it was last empty have filled. */
  #used = 0
  #sink: ReadSink | null = null
  #socket: Socket | null = null
  /** What the socket reads into next, and whether that is a lent destination. */
  #lent: Buffer = this.#current.buf
  #direct = false
  /** Bytes that arrived before a reader attached (copied: nobody could consume them yet). */
  #early: Buffer[] = []

  readonly options = {
    buffer: (): Buffer => this.#next(),
    callback: (n: number): boolean => {
      if (this.#direct) {
        this.#sink!.onDirect(n < this.#lent.length ? n + this.#readOn(n) : n)
      } else {
        const view = this.#lent.subarray(0, n)
        this.#used += n
        if (this.#sink !== null) this.#sink.onBytes(view, this.#current)
        else this.#early.push(Buffer.from(view))
      }
      // Flow control is the reader's, through pause()/resume(); never pause from here.
      return true
    }
  }

  attach (sink: ReadSink): Buffer[] {
    this.#sink = sink
    const early = this.#early
    this.#early = []
    return early
  }

  detach (): void {
    this.reclaim()
    this.#sink = null
  }

  /** Lending is possible only where Node's handle lets us take a lent view back. */
  get canLend (): boolean {
    const handle = (this.#socket as unknown as { _handle?: UserBufferHandle | null } | null)?._handle
    return typeof handle?.useUserBuffer === 'function'
  }

  /** If a destination is lent to the socket, takes it back (the next read goes to the pool). */
  reclaim (): void {
    if (!this.#direct) return
    this.#direct = false
    this.#lent = this.#poolView()
    this.#install()
  }

  /**
   * The reader's readSize() shrank (large READs are now in flight): if the socket would read
   * more than that into the pool, give it a view of the new size (not from a read callback).
   */
  refresh (): void {
    if (this.#direct || this.#sink === null || this.#lent.length <= this.#wanted()) return
    this.#next()
    this.#install()
  }

  /**
   * QEMU's receive loop: a read that filled only part of a lent destination is followed at
   * once by another, in this callback, until the destination is full or the socket is empty
   * (EAGAIN). libuv would go back to epoll after any short read; on a large reply the server's
   * thread refills the socket while we handle the first part, so most of these reads find data,
   * and each one saves an epoll wait, a wake-up of this thread and a turn of the event loop
   * (strace, 1 MiB READs at QD 16 over a Unix socket: epoll waits per MiB 6.5 → 1.6, EAGAIN
   * 0.3). At most READ_ON_MAX bytes per callback, so that a 32 MiB reply does not hold the
   * event loop (libuv itself stops after 32 reads). The end of the stream stops the loop and
   * libuv's next read meets it too; an error is reported by destroying the socket with it,
   * since read(2) reports a socket error once and libuv would then see only the end. Returns
   * the bytes it read.
   */
  #readOn (got: number): number {
    const fd = this.#fd()
    if (fd < 0) return 0
    const lent = this.#lent
    const end = Math.min(lent.length, got + READ_ON_MAX)
    let at = got
    let failed: Error | null = null
    const limit = Error.stackTraceLimit
    // EAGAIN is an exception here; a stack trace for it would be most of its cost.
    if (canTrimStacks) Error.stackTraceLimit = 0
    try {
      while (at < end) {
        const n = readSync(fd, lent, at, end - at, null)
        if (n <= 0) break
        at += n
      }
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code !== 'EAGAIN' && code !== 'EWOULDBLOCK' && code !== 'EINTR') failed = err as Error
    } finally {
      if (canTrimStacks) Error.stackTraceLimit = limit
    }
    if (failed !== null) {
      const socket = this.#socket
      process.nextTick(() => { socket?.destroy(failed) })
    }
    ReadHook.readOnBytes += at - got
    return at - got
  }

  /** The socket's descriptor, once it has one (-1: none, or a handle without one, as TLS). */
  #fd (): number {
    if (this.#fileDescriptor < 0) {
      const fd = (this.#socket as unknown as { _handle?: { fd?: number } | null } | null)?._handle?.fd
      if (typeof fd === 'number') this.#fileDescriptor = fd
    }
    return this.#fileDescriptor
  }

  #fileDescriptor = -1
  /** Bytes read by #readOn in this process (tests, profiles). */
  static readOnBytes = 0

  /** Decides the next read's buffer; Node installs what its buffer() call returns. */
  #next (): Buffer {
    const direct = this.#sink?.lend()
    if (direct !== undefined) {
      this.#direct = true
      this.#lent = direct
    } else {
      this.#direct = false
      this.#lent = this.#poolView()
    }
    return this.#lent
  }

  /** Gives the socket `#lent` outside a read callback (a native object per call: see above). */
  #install (): void {
    const handle = (this.#socket as unknown as { _handle?: UserBufferHandle | null } | null)?._handle
    handle?.useUserBuffer?.(this.#lent)
  }

  #wanted (): number {
    const size = this.#sink?.readSize() ?? READ_BUFFER_SIZE
    return size >= READ_BUFFER_SIZE ? READ_BUFFER_SIZE : Math.max(1, size)
  }

  /** Room for the next pool read: after the bytes still referred to in #current, or elsewhere. */
  #poolView (): Buffer {
    const size = this.#wanted()
    if (this.#current.refs === 0) this.#used = 0
    if (READ_BUFFER_SIZE - this.#used < size) {
      const free = this.#pool.find((p) => p.refs === 0)
      this.#current = free ?? new PooledBuffer(READ_BUFFER_SIZE)
      this.#used = 0
      // Past the limit, extra buffers are one-offs for the garbage collector.
      if (free === undefined && this.#pool.length < POOL_LIMIT) this.#pool.push(this.#current)
    }
    const buf = this.#current.buf
    return this.#used === 0 && size === READ_BUFFER_SIZE ? buf : buf.subarray(this.#used, this.#used + size)
  }

  static for (socket: object): ReadHook | undefined {
    return hooks.get(socket)
  }

  static register (socket: Socket, hook: ReadHook): void {
    hook.#socket = socket
    hooks.set(socket, hook)
    if (!ReadHook.#watching) {
      ReadHook.#watching = true
      process.on('uncaughtExceptionMonitor', () => { for (const open of ReadHook.#open) open.#install() })
    }
    ReadHook.#open.add(hook)
    socket.once('close', () => { ReadHook.#open.delete(hook) })
  }

  /** Hooks whose socket is not closed yet (see uncaughtExceptionMonitor above). */
  static readonly #open = new Set<ReadHook>()
  static #watching = false
}
