/**
 * The few libc calls Node lacks, through koffi, in one place: socketpair(2) and recvmsg(2) with
 * SCM_RIGHTS (fusermount3 hands the /dev/fuse descriptor back that way), prctl(2), a Unix
 * datagram socket with sendto(2) (systemd's notification socket; Node has no datagram Unix
 * sockets), setsockopt(SO_SNDBUF) (a Unix socket's send buffer), flock(2) (the pidfile),
 * getsockopt(SO_PEERCRED) (the control socket's peers), a descriptor read on the main
 * thread: fcntl(2) O_NONBLOCK, read(2) and a libuv poll handle (koffi.node.poll), and memory
 * that can be given back after a burst: mmap(2), madvise(MADV_DONTNEED), malloc_trim(3).
 * koffi is an optional dependency, loaded on first use, synchronously, so a machine without it
 * still runs everything that does not need these calls, and the one that does fails with a
 * clear message (NativeUnavailableError).
 */
import { createRequire } from 'node:module'
import { constants } from 'node:os'

/** The parts of koffi used here (its own types would make it a static import). */
interface Koffi {
  load: (path: string) => { func: (signature: string) => (...args: unknown[]) => unknown }
  alloc: (type: string, length: number) => unknown
  free: (pointer: unknown) => void
  view: (pointer: unknown, length: number) => ArrayBuffer
  address: (pointer: unknown) => bigint
  errno: () => number
  node?: { poll?: (fd: number, options: { readable: boolean }, callback: (status: number) => void) => KoffiPollHandle | null }
}

interface KoffiPollHandle {
  start: (options: { readable: boolean }, callback: (status: number) => void) => void
  stop: () => void
  close: () => void
}

interface Libc {
  readonly koffi: Koffi
  readonly socketpair: (domain: number, type: number, protocol: number, fds: Int32Array) => number
  readonly recvmsg: (fd: number, msg: unknown, flags: number) => number
  readonly close: (fd: number) => number
  readonly prctl: (option: number, a: number, b: number, c: number, d: number) => number
  readonly socket: (domain: number, type: number, protocol: number) => number
  readonly sendto: (fd: number, data: Buffer, length: number, flags: number, address: Buffer, addressLength: number) => number
  readonly setsockopt: (fd: number, level: number, name: number, value: Int32Array, length: number) => number
  readonly flock: (fd: number, operation: number) => number
  readonly getsockopt: (fd: number, level: number, name: number, value: Buffer, length: number[]) => number
  readonly fcntl: (fd: number, command: number, argument: number) => number
  readonly read: (fd: number, buffer: Uint8Array, length: number) => number
  readonly epoll_create1: (flags: number) => number
  readonly epoll_ctl: (epfd: number, op: number, fd: number, event: Uint8Array | null) => number
  readonly epoll_wait: (epfd: number, events: Uint8Array, max: number, timeout: number) => number
  readonly sched_yield: () => number
  readonly mmap: (addr: null, length: number, prot: number, flags: number, fd: number, offset: number) => unknown
  readonly madvise: (addr: bigint, length: number, advice: number) => number
  readonly malloc_trim: (pad: number) => number
}

export class NativeUnavailableError extends Error {
  readonly code = 'NBDTS_NO_KOFFI'
}

let libc: Libc | Error | undefined

function load (what: string): Libc {
  if (libc === undefined) {
    try {
      const koffi = createRequire(import.meta.url)('koffi') as Koffi
      const lib = koffi.load('libc.so.6')
      libc = {
        koffi,
        socketpair: lib.func('int socketpair(int domain, int type, int protocol, _Out_ int *sv)') as Libc['socketpair'],
        recvmsg: lib.func('intptr_t recvmsg(int sockfd, void *msg, int flags)') as Libc['recvmsg'],
        close: lib.func('int close(int fd)') as Libc['close'],
        prctl: lib.func('int prctl(int option, unsigned long a, unsigned long b, unsigned long c, unsigned long d)') as Libc['prctl'],
        socket: lib.func('int socket(int domain, int type, int protocol)') as Libc['socket'],
        sendto: lib.func('intptr_t sendto(int fd, const void *buf, size_t len, int flags, const void *addr, uint32_t addrlen)') as Libc['sendto'],
        setsockopt: lib.func('int setsockopt(int fd, int level, int name, const int *value, uint32_t length)') as Libc['setsockopt'],
        flock: lib.func('int flock(int fd, int operation)') as Libc['flock'],
        getsockopt: lib.func('int getsockopt(int fd, int level, int optname, _Out_ uint8_t *optval, _Inout_ uint32_t *optlen)') as Libc['getsockopt'],
        fcntl: lib.func('int fcntl(int fd, int command, int argument)') as Libc['fcntl'],
        read: lib.func('intptr_t read(int fd, _Out_ void *buffer, size_t length)') as Libc['read'],
        epoll_create1: lib.func('int epoll_create1(int flags)') as Libc['epoll_create1'],
        epoll_ctl: lib.func('int epoll_ctl(int epfd, int op, int fd, void *event)') as Libc['epoll_ctl'],
        epoll_wait: lib.func('int epoll_wait(int epfd, _Out_ void *events, int max, int timeout)') as Libc['epoll_wait'],
        sched_yield: lib.func('int sched_yield()') as Libc['sched_yield'],
        mmap: lib.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, intptr_t offset)') as Libc['mmap'],
        madvise: lib.func('int madvise(uintptr_t addr, size_t length, int advice)') as Libc['madvise'],
        malloc_trim: lib.func('int malloc_trim(size_t pad)') as Libc['malloc_trim']
      }
    } catch (err) {
      libc = err as Error
    }
  }
  if (libc instanceof Error) throw new NativeUnavailableError(`${what} needs ${unavailable(libc)}`, { cause: libc })
  return libc
}

function unavailable (err: Error): string {
  return (err as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND'
    ? 'the optional dependency koffi, which is not installed (npm install koffi)'
    : `the koffi package, which could not be loaded: ${err.message}`
}

/** Whether koffi was tried already (loaded, or found missing): a call now costs nothing more. */
export function nativeTried (): boolean {
  return libc !== undefined
}

/** Why the native calls cannot be made (koffi is tried once), or undefined when they can. */
export function nativeProblem (): string | undefined {
  try {
    load('')
    return undefined
  } catch (err) {
    return err instanceof NativeUnavailableError && libc instanceof Error ? unavailable(libc) : (err as Error).message
  }
}

function errnoError (call: string, errno: number): NodeJS.ErrnoException {
  const name = Object.entries(constants.errno).find(([, value]) => value === errno)?.[0] ?? `errno ${errno}`
  const err: NodeJS.ErrnoException = new Error(`${call}: ${name}`)
  err.code = name
  err.errno = -errno
  return err
}

const AF_UNIX = 1
export const SOCK_STREAM = 1
const SOCK_DGRAM = 2
export const SOCK_SEQPACKET = 5
const SOCK_CLOEXEC = 0o2000000

/** socketpair(AF_UNIX, type | SOCK_CLOEXEC): two connected descriptors. */
export function socketPair (type: number, what = 'a socket pair'): [number, number] {
  const c = load(what)
  const fds = new Int32Array(2)
  if (c.socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, fds) !== 0) throw errnoError('socketpair', c.koffi.errno())
  return [fds[0]!, fds[1]!]
}

export function closeFd (fd: number): void {
  load('close').close(fd)
}

const SOL_SOCKET = 1
const SCM_RIGHTS = 1
const MSG_CMSG_CLOEXEC = 0x40000000
const MSGHDR = 56
const CMSG_SPACE = 24
const MSG_DONTWAIT = 0x40
const EINTR = 4
const EAGAIN = 11

/**
 * Receives one descriptor passed with SCM_RIGHTS (and the byte that carries it). With
 * `dontWait`, never blocks (undefined when nothing is there); else blocks until a message
 * comes. Returns undefined at end of stream (the sender closed without passing one).
 *
 *   struct msghdr (x86-64, arm64): name 0, namelen 8, iov 16, iovlen 24, control 32,
 *   controllen 40, flags 48;  struct cmsghdr: len 0 (size_t), level 8, type 12, data 16
 */
export function receiveFd (socket: number, dontWait = false, what = 'receiving a descriptor'): number | undefined {
  const c = load(what)
  const k = c.koffi
  const memory = k.alloc('uint8_t', MSGHDR + 16 + CMSG_SPACE + 8)
  try {
    const base = k.address(memory)
    const view = new DataView(k.view(memory, MSGHDR + 16 + CMSG_SPACE + 8))
    const iov = MSGHDR
    const control = MSGHDR + 16
    const byte = control + CMSG_SPACE
    view.setBigUint64(iov, base + BigInt(byte), true)
    view.setBigUint64(iov + 8, 1n, true)
    view.setBigUint64(16, base + BigInt(iov), true)
    view.setBigUint64(24, 1n, true)
    view.setBigUint64(32, base + BigInt(control), true)
    view.setBigUint64(40, BigInt(CMSG_SPACE), true)
    let n: number
    do {
      n = Number(c.recvmsg(socket, memory, MSG_CMSG_CLOEXEC | (dontWait ? MSG_DONTWAIT : 0)))
    } while (n < 0 && k.errno() === EINTR)
    if (n < 0 && dontWait && k.errno() === EAGAIN) return undefined
    if (n < 0) throw errnoError('recvmsg', k.errno())
    if (n === 0) return undefined
    const controlLength = Number(view.getBigUint64(40, true))
    if (controlLength < 20 || view.getInt32(control + 8, true) !== SOL_SOCKET || view.getInt32(control + 12, true) !== SCM_RIGHTS) {
      throw new Error('the helper sent no file descriptor')
    }
    return view.getInt32(control + 16, true)
  } finally {
    k.free(memory)
  }
}

const PR_SET_IO_FLUSHER = 57

/**
 * PR_SET_IO_FLUSHER for the calling thread (and threads it starts later): memory reclaim in
 * this process does not wait on the I/O it serves itself, so a loop device or filesystem over
 * our own mount cannot deadlock it. Needs CAP_SYS_RESOURCE.
 */
export function setIoFlusher (): void {
  const c = load('PR_SET_IO_FLUSHER')
  if (c.prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) !== 0) throw errnoError('prctl(PR_SET_IO_FLUSHER)', c.koffi.errno())
}

const MSG_NOSIGNAL = 0x4000
/** sizeof(struct sockaddr_un): sun_family (2 bytes), then sun_path[108]. */
const SOCKADDR_UN = 110

/**
 * An unbound AF_UNIX datagram socket, to send from (close it with closeFd). A path starting
 * with "@" names an abstract socket, as systemd writes NOTIFY_SOCKET.
 */
export function datagramSocket (what = 'a datagram socket'): number {
  const c = load(what)
  const fd = c.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)
  if (fd < 0) throw errnoError('socket', c.koffi.errno())
  return fd
}

/** sendto(2) one datagram to the Unix socket at `target`. */
export function sendDatagram (fd: number, target: string, message: Buffer): void {
  const c = load('sendto')
  const abstract = target.startsWith('@')
  const name = Buffer.from(abstract ? `\0${target.slice(1)}` : target)
  if (name.length > SOCKADDR_UN - 3) throw new Error(`socket path too long (${name.length} bytes)`)
  const address = Buffer.alloc(SOCKADDR_UN)
  address.writeUInt16LE(AF_UNIX, 0)
  name.copy(address, 2)
  // A path name counts its terminating NUL; an abstract name is exactly its bytes.
  const length = 2 + name.length + (abstract ? 0 : 1)
  let n: number
  do {
    n = Number(c.sendto(fd, message, message.length, MSG_NOSIGNAL, address, length))
  } while (n < 0 && c.koffi.errno() === EINTR)
  if (n < 0) throw errnoError('sendto', c.koffi.errno())
}

const SO_SNDBUF = 7

/** setsockopt(SO_SNDBUF): the kernel caps it at net.core.wmem_max (and doubles it). */
export function setSendBuffer (fd: number, bytes: number): void {
  const c = load('SO_SNDBUF')
  if (c.setsockopt(fd, SOL_SOCKET, SO_SNDBUF, Int32Array.of(bytes), 4) !== 0) throw errnoError('setsockopt(SO_SNDBUF)', c.koffi.errno())
}

const LOCK_EX = 2
const LOCK_NB = 4
const EWOULDBLOCK = 11

/** flock(fd, LOCK_EX | LOCK_NB): true once held, false when another process holds it. */
export function lockExclusive (fd: number, what = 'a file lock'): boolean {
  const c = load(what)
  if (c.flock(fd, LOCK_EX | LOCK_NB) === 0) return true
  const errno = c.koffi.errno()
  if (errno === EWOULDBLOCK) return false
  throw errnoError('flock', errno)
}

/** asm-generic value (x86-64, arm64, riscv...); powerpc differs. */
const SO_PEERCRED = process.arch === 'ppc64' ? 21 : 17

/** getsockopt(SO_PEERCRED): the process that connected a Unix socket; undefined if it cannot be read. */
export function peerCredentials (fd: number, what = 'peer credentials'): { pid: number, uid: number, gid: number } | undefined {
  const c = load(what)
  const value = Buffer.alloc(12)
  const length = [12]
  if (c.getsockopt(fd, SOL_SOCKET, SO_PEERCRED, value, length) !== 0 || length[0] !== 12) return undefined
  return { pid: value.readInt32LE(0), uid: value.readUInt32LE(4), gid: value.readUInt32LE(8) }
}

const F_GETFL = 3
const F_SETFL = 4
const O_NONBLOCK = 0o4000

/**
 * Sets (or clears) O_NONBLOCK on the descriptor's open file: reads then answer EAGAIN instead
 * of waiting (or wait again).
 */
export function setNonBlocking (fd: number, on = true): void {
  const c = load('O_NONBLOCK')
  const flags = c.fcntl(fd, F_GETFL, 0)
  if (flags < 0 || c.fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK) < 0) throw errnoError('fcntl(O_NONBLOCK)', c.koffi.errno())
}

/**
 * read(2) into `buffer` without Node's fs layer: the byte count, or a negative errno (no
 * exception: EAGAIN ends every drain of a non-blocking descriptor, and an Error per drain
 * would cost more than the read).
 */
export function readFd (fd: number, buffer: Uint8Array): number {
  const c = load('read(2)')
  const n = Number(c.read(fd, buffer, buffer.length))
  return n >= 0 ? n : -c.koffi.errno()
}

export interface FdPoll {
  /** Calls `onReadable` (status 0, or a negative libuv error) whenever the descriptor is readable. */
  start: () => void
  stop: () => void
  /** Stops for good; call it before closing the descriptor. */
  close: () => void
}

/**
 * The descriptor in Node's own event loop (libuv uv_poll, through koffi.node.poll): readiness
 * arrives as a callback on the main thread, and whatever it starts (promises, ticks) runs
 * before the loop waits again. Undefined when this koffi has no poll API.
 */
export function pollReadable (fd: number, onReadable: (status: number) => void): FdPoll | undefined {
  let c: Libc
  try {
    c = load('polling a descriptor')
  } catch {
    return undefined
  }
  const poll = c.koffi.node?.poll
  if (poll === undefined) return undefined
  const options = { readable: true }
  const handle = poll(fd, options, onReadable)
  if (handle === null) return undefined
  handle.stop()
  let closed = false
  return {
    start: () => { if (!closed) handle.start(options, onReadable) },
    stop: () => { if (!closed) handle.stop() },
    close: () => {
      if (closed) return
      closed = true
      handle.close()
    }
  }
}

const EPOLL_CLOEXEC = 0o2000000
const EPOLL_CTL_ADD = 1
const EPOLL_CTL_DEL = 2
const EPOLLIN = 1

/**
 * An epoll set of our own, to ask "is any of these readable?" without blocking (busy-poll.ts).
 * Only the count of ready descriptors is used, so the layout of struct epoll_event (12 bytes
 * packed on x86-64, 16 elsewhere) matters only for its first field, `events`.
 */
export class ReadySet {
  readonly #c: Libc
  readonly #fd: number
  readonly #event = new Uint8Array(16)
  readonly #out = new Uint8Array(16)

  constructor () {
    this.#c = load('an epoll set')
    this.#fd = this.#c.epoll_create1(EPOLL_CLOEXEC)
    if (this.#fd < 0) throw errnoError('epoll_create1', this.#c.koffi.errno())
    new DataView(this.#event.buffer).setUint32(0, EPOLLIN, true)
  }

  add (fd: number): boolean {
    return this.#c.epoll_ctl(this.#fd, EPOLL_CTL_ADD, fd, this.#event) === 0
  }

  /** Forgets `fd` (a descriptor already closed is gone from the set by itself). */
  remove (fd: number): void {
    this.#c.epoll_ctl(this.#fd, EPOLL_CTL_DEL, fd, this.#event)
  }

  /** Is anything in the set readable now? */
  ready (): boolean {
    return this.#c.epoll_wait(this.#fd, this.#out, 1, 0) > 0
  }

  close (): void {
    this.#c.close(this.#fd)
  }
}

/** sched_yield(2): let whatever else is runnable on this CPU run. */
export function schedYield (): void {
  load('sched_yield').sched_yield()
}

/** Memory whose pages can be given back (discardPages): anonymous, private, page-aligned. */
export interface PageMemory {
  readonly buffer: Buffer
  readonly address: bigint
}

const PROT_READ_WRITE = 3
const MAP_PRIVATE_ANONYMOUS = 0x22
const MADV_DONTNEED = 4
const PAGE = 4096n

/** `length` bytes of anonymous memory, resident only where touched. Never unmapped (views may outlive their user). */
export function pageMemory (length: number, what = 'page memory'): PageMemory {
  const c = load(what)
  const pointer = c.mmap(null, length, PROT_READ_WRITE, MAP_PRIVATE_ANONYMOUS, -1, 0)
  const address = pointer === null ? -1n : c.koffi.address(pointer)
  if (address <= 0n || address === (1n << 64n) - 1n) throw errnoError('mmap', c.koffi.errno())
  return { buffer: Buffer.from(c.koffi.view(pointer, length)), address }
}

/**
 * Gives the whole pages inside [offset, offset+length) of `memory` back to the kernel: they
 * read as zeroes when next touched, and hold no memory until then.
 */
export function discardPages (memory: PageMemory, offset: number, length: number): void {
  const start = (memory.address + BigInt(offset) + PAGE - 1n) / PAGE * PAGE
  const end = (memory.address + BigInt(offset + length)) / PAGE * PAGE
  if (end <= start) return
  const c = load('madvise(2)')
  if (c.madvise(start, Number(end - start), MADV_DONTNEED) !== 0) throw errnoError('madvise', c.koffi.errno())
}

/** malloc_trim(0): the C heap's free memory back to the kernel (Buffers live there). */
export function trimHeap (): void {
  try {
    load('malloc_trim(3)').malloc_trim(0)
  } catch { /* no koffi: nothing to give back this way */ }
}
