/**
 * Files a privileged process opens where someone else may have prepared the path: pidfiles,
 * logs, config files, history. Each is opened once, never through a symbolic link (O_NOFOLLOW
 * on the last component), never blocking on a FIFO (O_NONBLOCK), and checked through its
 * descriptor (fstat) before a byte is written or trusted, so what was checked is what is used:
 *
 *   open(O_NOFOLLOW | O_NONBLOCK) ──► fstat: regular file? ours? one link? ──► fchmod ──► use fd
 *        │ ELOOP: a link                   │ no: close, refuse (nothing was truncated or written)
 *        ▼                                 ▼
 *     refuse                             refuse
 *
 * Directories above the last component are not checked: whoever names the path (root, the
 * user who typed the command) vouches for them.
 */
import {
  closeSync, constants, fchmodSync, fstatSync, ftruncateSync, lstatSync, openSync, readSync, unlinkSync,
  writeSync, type Stats
} from 'node:fs'
import { lockExclusive, nativeProblem } from './libc.ts'

const { O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_APPEND, O_NOFOLLOW, O_NONBLOCK } = constants

/** A file refused before use; `why` says it without the path ("a symbolic link (not followed)"). */
export class UnsafeFileError extends Error {
  readonly code = 'UNSAFE_FILE'
  readonly file: string
  readonly why: string
  constructor (file: string, why: string) {
    super(`${file}: ${why}`)
    this.file = file
    this.why = why
  }

  override get name (): string { return 'UnsafeFileError' }
}

const euid = (): number => process.geteuid?.() ?? -1

/** open(2) with O_NOFOLLOW, turning ELOOP into a refusal that says why. */
function openNoFollow (file: string, flags: number, mode?: number): number {
  try {
    return openSync(file, flags | O_NOFOLLOW | O_NONBLOCK, mode)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ELOOP') throw new UnsafeFileError(file, 'a symbolic link (not followed)')
    throw err
  }
}

function refuse (fd: number, file: string, why: string): never {
  closeSync(fd)
  throw new UnsafeFileError(file, why)
}

/** A regular file with one name: what every file here must be before it is used. */
function checkPlain (fd: number, file: string, stat: Stats): void {
  if (!stat.isFile()) refuse(fd, file, 'not a regular file')
  if (stat.nlink !== 1) refuse(fd, file, `${stat.nlink} hard links (a file that is also elsewhere)`)
}

export interface ReadResult {
  readonly text: string
  readonly stat: Stats
}

/**
 * Reads a whole file without following a link at `file`. `check` sees the descriptor's stat
 * before anything is read and returns why the file is refused, if it is.
 */
export function readFileNoFollow (file: string, options: { maxBytes: number, check?: (stat: Stats) => string | undefined }): ReadResult {
  const fd = openNoFollow(file, O_RDONLY)
  const stat = fstatSync(fd)
  if (!stat.isFile()) refuse(fd, file, 'not a regular file')
  const why = options.check?.(stat)
  if (why !== undefined) refuse(fd, file, why)
  if (stat.size > options.maxBytes) refuse(fd, file, `${stat.size} bytes, above the ${options.maxBytes}-byte limit`)
  try {
    const buf = Buffer.alloc(options.maxBytes + 1)
    let length = 0
    for (;;) {
      const n = readSync(fd, buf, length, buf.length - length, null)
      if (n === 0) break
      length += n
      if (length > options.maxBytes) throw new UnsafeFileError(file, `grew above the ${options.maxBytes}-byte limit while being read`)
    }
    return { text: buf.toString('utf8', 0, length), stat }
  } finally {
    closeSync(fd)
  }
}

/**
 * Opens a file we write (created with `mode` if missing): never through a link, only a
 * regular file with one name that the effective user owns; its mode is set to `mode` through
 * the descriptor. Returns the descriptor, positioned at the end when `append`.
 */
export function openOwnFile (file: string, mode: number, options: { append?: boolean, read?: boolean } = {}): number {
  const access = options.read === true ? O_RDWR : O_WRONLY
  const fd = openNoFollow(file, access | O_CREAT | (options.append === true ? O_APPEND : 0), mode)
  const stat = fstatSync(fd)
  checkPlain(fd, file, stat)
  if (stat.uid !== euid()) refuse(fd, file, `belongs to uid ${stat.uid}, not to us (uid ${euid()})`)
  if ((stat.mode & 0o7777) !== mode) fchmodSync(fd, mode)
  return fd
}

/** Replaces a file's whole content through its descriptor (after openOwnFile). */
export function rewrite (fd: number, text: string): void {
  ftruncateSync(fd, 0)
  const bytes = Buffer.from(text)
  let at = 0
  while (at < bytes.length) at += writeSync(fd, bytes, at, bytes.length - at, at)
}

// ── the pidfile ─────────────────────────────────────────────────────────────────────────

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/**
 * A daemon's pidfile, held for its whole life:
 *
 *   acquire ──► open (O_NOFOLLOW, ours, one link, mode 0640) ──► flock(LOCK_EX|LOCK_NB)
 *                                                                  │ held by another process
 *                                                                  ▼
 *                                                          refuse: "already running as PID"
 *   write(pid) rewrites it through the descriptor; release unlinks it only while the path
 *   still names our file, then closes (which drops the lock).
 *
 * A pidfile left by a dead daemon is not locked, so it is simply taken over. Without koffi
 * there is no flock: the PID inside is checked instead (a live process refuses the start),
 * which two daemons starting in the same instant could both pass.
 */
export class Pidfile {
  readonly path: string
  #fd: number
  readonly #dev: number
  readonly #ino: number

  private constructor (file: string, fd: number) {
    this.path = file
    this.#fd = fd
    const stat = fstatSync(fd)
    this.#dev = stat.dev
    this.#ino = stat.ino
  }

  static readonly MODE = 0o640

  static acquire (file: string): Pidfile {
    const fd = openOwnFile(file, Pidfile.MODE, { read: true })
    const previous = (): number | undefined => {
      const buf = Buffer.alloc(32)
      const n = readSync(fd, buf, 0, buf.length, 0)
      const pid = Number(buf.toString('utf8', 0, n).trim())
      return Number.isInteger(pid) && pid > 0 ? pid : undefined
    }
    if (nativeProblem() === undefined) {
      let held: boolean
      try {
        held = lockExclusive(fd, 'the pidfile lock')
      } catch (err) {
        closeSync(fd)
        throw new UnsafeFileError(file, `cannot be locked (${(err as Error).message})`)
      }
      if (!held) {
        const pid = previous()
        closeSync(fd)
        throw new UnsafeFileError(file, `locked: nbdts is already running${pid === undefined ? '' : ` as pid ${pid}`}`)
      }
    } else {
      // Without koffi there is no flock: the pid it names must not be running.
      const pid = previous()
      if (pid !== undefined && pid !== process.pid && alive(pid)) {
        closeSync(fd)
        throw new UnsafeFileError(file, `names pid ${pid}, which is running`)
      }
    }
    ftruncateSync(fd, 0)
    return new Pidfile(file, fd)
  }

  write (pid = process.pid): void {
    rewrite(this.#fd, `${pid}\n`)
  }

  /** Removes the pidfile if the path is still ours, and drops the lock. Idempotent. */
  release (): void {
    if (this.#fd < 0) return
    try {
      const now = lstatSync(this.path)
      if (now.dev === this.#dev && now.ino === this.#ino) unlinkSync(this.path)
    } catch { /* already gone */ }
    closeSync(this.#fd)
    this.#fd = -1
  }
}
