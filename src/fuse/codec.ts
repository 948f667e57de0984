/**
 * Parsing FUSE requests and encoding replies. Pure: buffers in, values out; replies are
 * written into caller-provided scratch buffers. Offsets are byte positions in structs from
 * include/uapi/linux/fuse.h; everything is little-endian.
 */
import { ATTR, ATTR_OUT, DT_DIR, DT_REG, ENTRY_OUT, IN_HEADER, OUT_HEADER, STATFS_OUT } from './abi.ts'

const TWO_32 = 0x1_0000_0000

/** A u64 as a number: exact up to 2^53, which covers uniques and node ids (never file offsets). */
export function u64 (buf: Buffer, at: number): number {
  return buf.readUInt32LE(at + 4) * TWO_32 + buf.readUInt32LE(at)
}

/** Below 2^53 a number is exact and cheap; file offsets above it stay exact as a bigint. */
const EXACT_HIGH = 0x20_0000

/**
 * A file offset or length (a u64): a number when it is exact, else a bigint. Offsets past 2^53
 * are real on exports past 8 PiB, and one rounded to a neighbour would touch the wrong byte.
 */
export function offset64 (buf: Buffer, at: number): number | bigint {
  const high = buf.readUInt32LE(at + 4)
  return high < EXACT_HIGH ? high * TWO_32 + buf.readUInt32LE(at) : buf.readBigUInt64LE(at)
}

function writeU64 (buf: Buffer, value: number | bigint, at: number): void {
  if (typeof value === 'bigint') {
    buf.writeBigUInt64LE(value, at)
    return
  }
  buf.writeUInt32LE(value >>> 0, at)
  buf.writeUInt32LE(Math.floor(value / TWO_32), at + 4)
}

/** struct fuse_in_header */
export interface InHeader {
  length: number
  opcode: number
  unique: number
  nodeid: number
  uid: number
  gid: number
  pid: number
}

export function emptyInHeader (): InHeader {
  return { length: 0, opcode: 0, unique: 0, nodeid: 0, uid: 0, gid: 0, pid: 0 }
}

/**
 * Decodes the header into `into` (a new object unless given): the dispatcher passes one it
 * reuses, so a request costs no allocation here.
 */
export function parseInHeader (buf: Buffer, into: InHeader = emptyInHeader()): InHeader {
  into.length = buf.readUInt32LE(0)
  into.opcode = buf.readUInt32LE(4)
  into.unique = u64(buf, 8)
  into.nodeid = u64(buf, 16)
  into.uid = buf.readUInt32LE(24)
  into.gid = buf.readUInt32LE(28)
  into.pid = buf.readUInt32LE(32)
  return into
}

/** The unique of the request an INTERRUPT names (struct fuse_interrupt_in). */
export function parseInterruptIn (buf: Buffer): number {
  return u64(buf, IN_HEADER)
}

/** struct fuse_out_header, written into `target`. `error` is 0 or a negative errno. */
export function encodeOutHeader (target: Buffer, length: number, error: number, unique: number): void {
  target.writeUInt32LE(OUT_HEADER + length, 0)
  target.writeInt32LE(error, 4)
  writeU64(target, unique, 8)
}

export interface Attributes {
  readonly ino: number
  readonly size: number | bigint
  /** 512-byte blocks allocated. */
  readonly blocks: number | bigint
  readonly mode: number
  readonly nlink: number
  readonly uid: number
  readonly gid: number
  /** Seconds since the epoch, for atime, mtime and ctime alike. */
  readonly time: number
  readonly blksize: number
}

/** struct fuse_attr at `at`. */
function writeAttr (target: Buffer, attr: Attributes, at: number): void {
  target.fill(0, at, at + ATTR)
  writeU64(target, attr.ino, at)
  writeU64(target, attr.size, at + 8)
  writeU64(target, attr.blocks, at + 16)
  writeU64(target, attr.time, at + 24)
  writeU64(target, attr.time, at + 32)
  writeU64(target, attr.time, at + 40)
  target.writeUInt32LE(attr.mode, at + 60)
  target.writeUInt32LE(attr.nlink, at + 64)
  target.writeUInt32LE(attr.uid, at + 68)
  target.writeUInt32LE(attr.gid, at + 72)
  target.writeUInt32LE(attr.blksize, at + 80)
}

/** struct fuse_attr_out: the attributes and how long the kernel may cache them. */
export function encodeAttrOut (target: Buffer, attr: Attributes, validSeconds: number): Buffer {
  writeU64(target, validSeconds, 0)
  target.writeUInt32LE(0, 8)
  target.writeUInt32LE(0, 12)
  writeAttr(target, attr, 16)
  return target.subarray(0, ATTR_OUT)
}

/** struct fuse_entry_out: a LOOKUP answer. */
export function encodeEntryOut (target: Buffer, attr: Attributes, validSeconds: number): Buffer {
  writeU64(target, attr.ino, 0)
  writeU64(target, 1, 8) // generation: nodeids are never reused
  writeU64(target, validSeconds, 16)
  writeU64(target, validSeconds, 24)
  target.writeUInt32LE(0, 32)
  target.writeUInt32LE(0, 36)
  writeAttr(target, attr, 40)
  return target.subarray(0, ENTRY_OUT)
}

export interface InitIn {
  readonly major: number
  readonly minor: number
  readonly maxReadahead: number
  readonly flags: number
}

export function parseInitIn (buf: Buffer): InitIn {
  return {
    major: buf.readUInt32LE(IN_HEADER),
    minor: buf.readUInt32LE(IN_HEADER + 4),
    maxReadahead: buf.readUInt32LE(IN_HEADER + 8),
    flags: buf.readUInt32LE(IN_HEADER + 12)
  }
}

export interface InitOut {
  readonly major: number
  readonly minor: number
  readonly maxReadahead: number
  readonly flags: number
  readonly maxBackground: number
  readonly congestionThreshold: number
  readonly maxWrite: number
  readonly maxPages: number
}

/** struct fuse_init_out */
export function encodeInitOut (target: Buffer, init: InitOut): Buffer {
  target.fill(0, 0, 64)
  target.writeUInt32LE(init.major, 0)
  target.writeUInt32LE(init.minor, 4)
  target.writeUInt32LE(init.maxReadahead, 8)
  target.writeUInt32LE(init.flags, 12)
  target.writeUInt16LE(init.maxBackground, 16)
  target.writeUInt16LE(init.congestionThreshold, 18)
  target.writeUInt32LE(init.maxWrite, 20)
  target.writeUInt32LE(1, 24) // time_gran: 1 ns
  target.writeUInt16LE(init.maxPages, 28)
  return target.subarray(0, 64)
}

/** fuse_read_in and fuse_write_in share their first fields: fh, offset, size. */
export interface IoIn {
  readonly offset: number | bigint
  readonly size: number
  readonly flags: number
}

export function parseIoIn (buf: Buffer): IoIn {
  return { offset: offset64(buf, IN_HEADER + 8), size: buf.readUInt32LE(IN_HEADER + 16), flags: buf.readUInt32LE(IN_HEADER + 32) }
}

export function parseOpenFlags (buf: Buffer): number {
  return buf.readUInt32LE(IN_HEADER)
}

export interface SetattrIn {
  readonly valid: number
  readonly size: number | bigint
  readonly mode: number
  readonly uid: number
  readonly gid: number
}

export function parseSetattrIn (buf: Buffer): SetattrIn {
  return {
    valid: buf.readUInt32LE(IN_HEADER),
    size: offset64(buf, IN_HEADER + 16),
    mode: buf.readUInt32LE(IN_HEADER + 68),
    uid: buf.readUInt32LE(IN_HEADER + 76),
    gid: buf.readUInt32LE(IN_HEADER + 80)
  }
}

export interface FallocateIn {
  readonly offset: bigint
  readonly length: bigint
  readonly mode: number
}

export function parseFallocateIn (buf: Buffer): FallocateIn {
  return { offset: buf.readBigUInt64LE(IN_HEADER + 8), length: buf.readBigUInt64LE(IN_HEADER + 16), mode: buf.readUInt32LE(IN_HEADER + 24) }
}

export interface LseekIn {
  readonly offset: bigint
  readonly whence: number
}

export function parseLseekIn (buf: Buffer): LseekIn {
  return { offset: buf.readBigUInt64LE(IN_HEADER + 8), whence: buf.readUInt32LE(IN_HEADER + 16) }
}

export function encodeU64Out (target: Buffer, value: number | bigint): Buffer {
  writeU64(target, value, 0)
  return target.subarray(0, 8)
}

/** struct fuse_write_out */
export function encodeWriteOut (target: Buffer, size: number): Buffer {
  target.writeUInt32LE(size, 0)
  target.writeUInt32LE(0, 4)
  return target.subarray(0, 8)
}

/** struct fuse_open_out */
export function encodeOpenOut (target: Buffer, fh: number, openFlags: number): Buffer {
  target.fill(0, 0, 16)
  writeU64(target, fh, 0)
  target.writeUInt32LE(openFlags, 8)
  return target.subarray(0, 16)
}

export interface Statfs {
  readonly blocks: number
  readonly bfree: number
  readonly files: number
  readonly bsize: number
}

/** struct fuse_statfs_out (struct fuse_kstatfs) */
export function encodeStatfsOut (target: Buffer, st: Statfs): Buffer {
  target.fill(0, 0, STATFS_OUT)
  writeU64(target, st.blocks, 0)
  writeU64(target, st.bfree, 8)
  writeU64(target, st.bfree, 16)
  writeU64(target, st.files, 24)
  target.writeUInt32LE(st.bsize, 40)
  target.writeUInt32LE(255, 44)
  target.writeUInt32LE(st.bsize, 48)
  return target.subarray(0, STATFS_OUT)
}

/** The NUL-terminated name after the header (LOOKUP). */
export function parseName (buf: Buffer, length: number): string {
  const end = buf.indexOf(0, IN_HEADER)
  return buf.toString('utf8', IN_HEADER, end < 0 || end > length ? length : end)
}

export interface DirEntry {
  readonly ino: number
  readonly name: string
  readonly type: typeof DT_DIR | typeof DT_REG
}

/**
 * struct fuse_dirent records for READDIR: entries after position `offset`, as many as fit
 * in `size` bytes. Each record's `off` is the position of the next entry.
 */
export function encodeDirents (entries: readonly DirEntry[], offset: number, size: number): Buffer {
  const parts: Buffer[] = []
  let used = 0
  for (let i = offset; i < entries.length; i++) {
    const e = entries[i]!
    const name = Buffer.from(e.name)
    const record = (24 + name.length + 7) & ~7
    if (used + record > size) break
    const b = Buffer.alloc(record)
    writeU64(b, e.ino, 0)
    writeU64(b, i + 1, 8)
    b.writeUInt32LE(name.length, 16)
    b.writeUInt32LE(e.type, 20)
    name.copy(b, 24)
    parts.push(b)
    used += record
  }
  return Buffer.concat(parts)
}
