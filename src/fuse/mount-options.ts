/**
 * `-o` FUSE mount options, as nbdfuse and libfuse take them (comma-separated, repeatable).
 *
 *   ours          allow_other, uid=N, gid=N, mode=OCTAL, kernel_cache, ro / rw,
 *                 busy_poll=µs (spin before sleeping while requests flow; 0 turns it off),
 *                 reader=drain|thread (who reads /dev/fuse: device-reader.ts),
 *                 readahead=KiB (the mount's readahead, root only: readahead.ts; default 4096),
 *                 blksize=N (the export's st_blksize, a power of two; default max_write, 1 MiB)
 *   passed on     the mount flags fusermount3 knows (exec, noexec, async, sync, atime, noatime,
 *                 dirsync) and max_read=N
 *   implied       default_permissions, nosuid, nodev (accepted, always on)
 *   refused       what we set ourselves (fd=, rootmode=, user_id=, group_id=, fsname=, subtype=),
 *                 what would weaken the mount (suid, dev, blkdev), and anything unknown
 *
 * Access: by default only the mounting user may open the export (the kernel refuses everyone
 * else without allow_other), and the file's mode is 0600. allow_other lets the kernel's
 * permission check (default_permissions) decide on the owner and mode, which uid=, gid= and
 * mode= set; allow_other alone therefore adds root, and `allow_other,mode=0644` lets every
 * user read.
 */
import { InvalidArgumentError } from '../errors.ts'

export interface MountOptionSet {
  readonly allowOther: boolean
  /** Owner of the export file (default: the mounting user). */
  readonly uid: number | undefined
  readonly gid: number | undefined
  /** Permission bits of the export file. @default 0o600 */
  readonly mode: number
  readonly readonly: boolean
  /** FOPEN_KEEP_CACHE: the page cache survives close and reopen. */
  readonly keepCache: boolean
  /** Microseconds to spin before the daemon sleeps while requests flow (busy-poll.ts); 0: never. */
  readonly busyPollUs: number
  /** Who reads /dev/fuse (device-reader.ts); undefined: drain where koffi can poll, else thread. */
  readonly reader: 'drain' | 'thread' | undefined
  /** Readahead of the mount's bdi, KiB (set through sysfs where we may); undefined: the default. */
  readonly readaheadKiB: number | undefined
  /** st_blksize of the export (the buffer size cp picks); undefined: max_write (1 MiB). */
  readonly blksize: number | undefined
  /** Passed to the kernel (mount(8) or fusermount3) as they are. */
  readonly kernel: readonly string[]
}

export const DEFAULT_MODE = 0o600
/** The spin that beat nbdfuse at QD 1 on these machines (bench/README.md, 2026-12-01). */
export const DEFAULT_BUSY_POLL_US = 30

/** The mount flags fusermount3 (3.14) passes on, so a root and a user mount take the same ones. */
const FLAGS = new Set(['exec', 'noexec', 'async', 'sync', 'atime', 'noatime', 'dirsync'])
const IMPLIED = new Set(['default_permissions', 'nosuid', 'nodev', 'rw'])
const OURS = new Set(['fd', 'rootmode', 'user_id', 'group_id', 'fsname', 'subtype'])

/** Parses `-o` values (each may hold several comma-separated options). */
export function parseMountOptions (values: readonly string[]): MountOptionSet {
  let allowOther = false
  let uid: number | undefined
  let gid: number | undefined
  let mode = DEFAULT_MODE
  let readonly = false
  let keepCache = false
  let busyPollUs = DEFAULT_BUSY_POLL_US
  let reader: 'drain' | 'thread' | undefined
  let readaheadKiB: number | undefined
  let blksize: number | undefined
  const kernel: string[] = []
  for (const option of values.flatMap((v) => v.split(',')).map((o) => o.trim()).filter((o) => o !== '')) {
    const eq = option.indexOf('=')
    const name = eq < 0 ? option : option.slice(0, eq)
    const value = eq < 0 ? undefined : option.slice(eq + 1)
    if (value === undefined && name === 'allow_other') allowOther = true
    else if (value === undefined && name === 'ro') readonly = true
    else if (value === undefined && name === 'kernel_cache') keepCache = true
    else if (value === undefined && (IMPLIED.has(name))) continue
    else if (value === undefined && FLAGS.has(name)) kernel.push(name)
    else if (name === 'uid') uid = id(option, value)
    else if (name === 'gid') gid = id(option, value)
    else if (name === 'mode') mode = octalMode(option, value)
    else if (name === 'max_read') kernel.push(`max_read=${id(option, value)}`)
    else if (name === 'busy_poll') busyPollUs = microseconds(option, value)
    else if (name === 'reader') reader = readerKind(option, value)
    else if (name === 'readahead') readaheadKiB = id(option, value)
    else if (name === 'blksize') blksize = powerOfTwo(option, value)
    else if (OURS.has(name)) throw new InvalidArgumentError(`mount option "${option}": nbdts sets ${name} itself`)
    else if (name === 'suid' || name === 'dev' || name === 'blkdev') throw new InvalidArgumentError(`mount option "${option}" is refused: the export is mounted nosuid,nodev as a plain file`)
    else if (name === 'allow_root') throw new InvalidArgumentError('mount option "allow_root" is not supported: allow_other with the default mode 0600 lets only you and root in')
    else throw new InvalidArgumentError(`unknown mount option "${option}" (see nbdts mount --help)`)
  }
  return { allowOther, uid, gid, mode, readonly, keepCache, busyPollUs, reader, readaheadKiB, blksize, kernel }
}

function id (option: string, value: string | undefined): number {
  if (value === undefined || !/^\d+$/.test(value) || Number(value) > 0xffffffff) {
    throw new InvalidArgumentError(`mount option "${option}" needs a number`)
  }
  return Number(value)
}

/** A spin longer than this would hold the loop (timers, the control socket) for too long. */
export const MAX_BUSY_POLL_US = 500

function microseconds (option: string, value: string | undefined): number {
  if (value === undefined || !/^\d{1,3}$/.test(value) || Number(value) > MAX_BUSY_POLL_US) {
    throw new InvalidArgumentError(`mount option "${option}" needs microseconds, 0 to ${MAX_BUSY_POLL_US} (0: no spinning)`)
  }
  return Number(value)
}

function powerOfTwo (option: string, value: string | undefined): number {
  const n = id(option, value)
  if (n < 512 || n > 1 << 20 || (n & (n - 1)) !== 0) throw new InvalidArgumentError(`mount option "${option}" needs a power of two from 512 to 1048576`)
  return n
}

function readerKind (option: string, value: string | undefined): 'drain' | 'thread' {
  if (value !== 'drain' && value !== 'thread') {
    throw new InvalidArgumentError(`mount option "${option}" needs drain (the main thread reads the device) or thread (a reader thread)`)
  }
  return value
}

function octalMode (option: string, value: string | undefined): number {
  if (value === undefined || !/^0?[0-7]{1,3}$/.test(value)) {
    throw new InvalidArgumentError(`mount option "${option}" needs permission bits in octal, such as mode=0644`)
  }
  return Number.parseInt(value, 8)
}
