/**
 * The FUSE kernel ABI, from the kernel's include/uapi/linux/fuse.h (protocol 7.45 on this
 * kernel; we speak 7.31 and up). Names follow the header. All fields are little-endian.
 */

export const FUSE_KERNEL_VERSION = 7
/** The highest minor version we implement; we reply min(kernel's, this). */
export const FUSE_OUR_MINOR = 38
/** The lowest kernel minor we accept (max_pages arrived in 7.28, lseek in 7.24). */
export const FUSE_MIN_MINOR = 28
export const FUSE_ROOT_ID = 1

export const FUSE_OP = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  GETXATTR: 22,
  LISTXATTR: 23,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  DESTROY: 38,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
  RENAME2: 45,
  LSEEK: 46,
  /** Sent by newer kernels whatever minor we reply; ENOSYS makes them fall back to GETATTR for good. */
  TMPFILE: 51,
  STATX: 52
} as const

/** fuse_init_in.flags / fuse_init_out.flags */
export const FUSE_INIT_FLAG = {
  ASYNC_READ: 1 << 0,
  ATOMIC_O_TRUNC: 1 << 3,
  BIG_WRITES: 1 << 5,
  ASYNC_DIO: 1 << 15,
  PARALLEL_DIROPS: 1 << 18,
  MAX_PAGES: 1 << 22
} as const

/** fuse_open_out.open_flags */
export const FOPEN_KEEP_CACHE = 1 << 1
export const FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6

/** fuse_setattr_in.valid */
export const FATTR = {
  MODE: 1 << 0,
  UID: 1 << 1,
  GID: 1 << 2,
  SIZE: 1 << 3,
  ATIME: 1 << 4,
  MTIME: 1 << 5,
  FH: 1 << 6,
  ATIME_NOW: 1 << 7,
  MTIME_NOW: 1 << 8,
  LOCKOWNER: 1 << 9,
  CTIME: 1 << 10,
  KILL_SUIDGID: 1 << 11
} as const

/** fallocate(2) modes, from linux/falloc.h. */
export const FALLOC_FL = {
  KEEP_SIZE: 0x01,
  PUNCH_HOLE: 0x02,
  ZERO_RANGE: 0x10
} as const

/** lseek(2) whence values the kernel forwards (SEEK_SET/CUR/END it handles itself). */
export const SEEK_DATA = 3
export const SEEK_HOLE = 4

export const S_IFREG = 0o100000
export const S_IFDIR = 0o040000
export const DT_DIR = 4
export const DT_REG = 8

// Struct sizes (bytes).
export const IN_HEADER = 40
export const OUT_HEADER = 16
export const ATTR = 88
export const ATTR_OUT = 16 + ATTR
export const ENTRY_OUT = 40 + ATTR
export const INIT_OUT = 64
export const OPEN_OUT = 16
export const WRITE_IN = 40
export const WRITE_OUT = 8
export const STATFS_OUT = 80
export const LSEEK_OUT = 8
/** The kernel wants every device read to have room for the largest WRITE plus its headers. */
export const FUSE_MIN_READ_BUFFER = 8192
