/**
 * The file calls Node lacks, through koffi (already the project's way to libc, see
 * src/util/libc.ts): pread/pwrite into page-aligned memory (O_DIRECT wants it), mmap, msync,
 * fallocate with a mode, and lseek with SEEK_DATA/SEEK_HOLE. For the file exerciser (fsx.ts);
 * offsets are bigints, so nothing is rounded on the way.
 */
import { createRequire } from 'node:module'
import { constants } from 'node:os'

interface Koffi {
  load: (path: string) => { func: (signature: string) => (...args: unknown[]) => unknown }
  view: (pointer: unknown, length: number) => ArrayBuffer
  address: (pointer: unknown) => bigint
  errno: () => number
}

type Fn<A extends unknown[], R> = (...args: A) => R

interface Calls {
  readonly koffi: Koffi
  readonly pread: Fn<[number, unknown, number, bigint], number | bigint>
  readonly pwrite: Fn<[number, unknown, number, bigint], number | bigint>
  readonly mmap: Fn<[unknown, number, number, number, number, bigint], unknown>
  readonly munmap: Fn<[unknown, number], number>
  readonly msync: Fn<[unknown, number, number], number>
  readonly fallocate: Fn<[number, number, bigint, bigint], number>
  readonly lseek: Fn<[number, bigint, number], number | bigint>
}

let calls: Calls | undefined

function libc (): Calls {
  if (calls !== undefined) return calls
  const koffi = createRequire(import.meta.url)('koffi') as Koffi
  const lib = koffi.load('libc.so.6')
  calls = {
    koffi,
    pread: lib.func('intptr_t pread(int fd, void *buf, size_t count, int64_t offset)') as Calls['pread'],
    pwrite: lib.func('intptr_t pwrite(int fd, void *buf, size_t count, int64_t offset)') as Calls['pwrite'],
    mmap: lib.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)') as Calls['mmap'],
    munmap: lib.func('int munmap(void *addr, size_t length)') as Calls['munmap'],
    msync: lib.func('int msync(void *addr, size_t length, int flags)') as Calls['msync'],
    fallocate: lib.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)') as Calls['fallocate'],
    lseek: lib.func('int64_t lseek(int fd, int64_t offset, int whence)') as Calls['lseek']
  }
  return calls
}

const PROT_READ = 1
const PROT_WRITE = 2
const MAP_SHARED = 1
const MAP_PRIVATE = 2
const MAP_ANONYMOUS = 0x20
const MS_SYNC = 4
const MAP_FAILED = (1n << 64n) - 1n
export const FALLOC_FL_KEEP_SIZE = 0x01
export const FALLOC_FL_PUNCH_HOLE = 0x02
export const FALLOC_FL_ZERO_RANGE = 0x10
export const SEEK_DATA = 3
export const SEEK_HOLE = 4

export class SyscallError extends Error {
  readonly code: string
  constructor (call: string, errno: number) {
    const code = Object.entries(constants.errno).find(([, v]) => v === errno)?.[0] ?? `errno ${errno}`
    super(`${call}: ${code}`)
    this.code = code
  }
}

function check (call: string, result: number | bigint): number {
  const n = Number(result)
  if (n < 0) throw new SyscallError(call, libc().koffi.errno())
  return n
}

/** A region of memory: `buffer` to fill and read, `pointer` for the calls. */
export interface Region {
  readonly pointer: unknown
  readonly buffer: Buffer
  readonly length: number
}

function map (length: number, prot: number, flags: number, fd: number, offset: bigint, what: string): Region {
  const c = libc()
  const pointer = c.mmap(null, length, prot, flags, fd, offset)
  if (pointer === null || c.koffi.address(pointer) === MAP_FAILED) throw new SyscallError(what, c.koffi.errno())
  return { pointer, buffer: Buffer.from(c.koffi.view(pointer, length)), length }
}

/** Page-aligned anonymous memory, as O_DIRECT wants its buffers. */
export function alignedRegion (length: number): Region {
  return map(length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0n, 'mmap(anonymous)')
}

/** The file's pages [offset, offset+length) shared (offset page-aligned). */
export function mapFile (fd: number, offset: bigint, length: number): Region {
  return map(length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset, `mmap(fd ${fd}, ${offset}, ${length})`)
}

export function unmap (region: Region): void {
  check('munmap', libc().munmap(region.pointer, region.length))
}

export function syncRegion (region: Region): void {
  check('msync', libc().msync(region.pointer, region.length, MS_SYNC))
}

export function preadInto (fd: number, region: Region, length: number, offset: bigint): number {
  return check(`pread(${offset}, ${length})`, libc().pread(fd, region.pointer, length, offset))
}

export function pwriteFrom (fd: number, region: Region, length: number, offset: bigint): number {
  return check(`pwrite(${offset}, ${length})`, libc().pwrite(fd, region.pointer, length, offset))
}

export function fallocate (fd: number, mode: number, offset: bigint, length: bigint): void {
  check(`fallocate(mode ${mode}, ${offset}, ${length})`, libc().fallocate(fd, mode, offset, length))
}

/** lseek; ENXIO (no data, or past the end) is null. */
export function seek (fd: number, offset: bigint, whence: number): bigint | null {
  const c = libc()
  const result = BigInt(c.lseek(fd, offset, whence))
  if (result >= 0n) return result
  const errno = c.koffi.errno()
  if (errno === constants.errno.ENXIO) return null
  throw new SyscallError(`lseek(${offset}, ${whence})`, errno)
}
