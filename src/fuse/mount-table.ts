/**
 * What /proc/self/mountinfo says about a path, and the tools that mount and unmount. Root
 * mounts through mount(8) with the open /dev/fuse handed over as an inherited descriptor
 * (fd 3) and the pinned target as fd 4, so the kernel talks FUSE to us directly; other users
 * mount through fusermount3 (fusermount.ts). Unmounting is umount(8) for root and
 * `fusermount3 -u` for everyone else.
 */
import { spawn } from 'node:child_process'
import { existsSync, readFileSync, statfsSync, writeFileSync } from 'node:fs'
import { MountError } from '../errors.ts'

export const FS_TYPE = 'fuse.nbdts'

export interface MountEntry {
  readonly mountPoint: string
  readonly fsType: string
  readonly source: string
  /** The superblock's device, "major:minor"; for FUSE the minor is the connection number. */
  readonly device: string
  /** Per-superblock options: for FUSE, user_id=, group_id=, allow_other, ... */
  readonly superOptions: string
}

/** mountinfo escapes spaces, tabs, newlines and backslashes as octal (\040...). */
function unescape (field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(Number.parseInt(oct, 8)))
}

export function mounts (): MountEntry[] {
  const text = readFileSync('/proc/self/mountinfo', 'utf8')
  const entries: MountEntry[] = []
  for (const line of text.split('\n')) {
    if (line === '') continue
    const [left, right] = line.split(' - ')
    if (left === undefined || right === undefined) continue
    const fields = left.split(' ')
    const mountPoint = fields[4]
    const [fsType, source, superOptions] = right.split(' ')
    if (mountPoint !== undefined && fsType !== undefined) {
      entries.push({ mountPoint: unescape(mountPoint), fsType, source: unescape(source ?? ''), device: fields[2] ?? '', superOptions: superOptions ?? '' })
    }
  }
  return entries
}

/** Our mount on `path`, if there is one (the last mount there wins). */
export function nbdtsMountAt (path: string): MountEntry | undefined {
  return mounts().filter((m) => m.mountPoint === path && m.fsType === FS_TYPE).pop()
}

/** Our mount with source `source`, wherever it is. */
export function nbdtsMountWithSource (source: string): MountEntry | undefined {
  return mounts().filter((m) => m.source === source && m.fsType === FS_TYPE).pop()
}

/** The pid a mount's source names ("nbdts:PID"). Anyone can forge it: see daemon-check.ts. */
export function daemonPid (entry: MountEntry): number | undefined {
  const match = /^nbdts:(\d+)$/.exec(entry.source)
  return match === null ? undefined : Number(match[1])
}

/** The user who made a FUSE mount (the kernel's user_id= option), if it says. */
export function mountOwner (entry: MountEntry): number | undefined {
  const match = /(?:^|,)user_id=(\d+)(?:,|$)/.exec(entry.superOptions)
  return match === null ? undefined : Number(match[1])
}

/** The FUSE connection number (its fusectl directory), from the superblock's minor. */
export function connectionNumber (entry: MountEntry): number {
  return Number(entry.device.split(':')[1])
}

/**
 * A FUSE mount whose daemon is gone answers with ENOTCONN. stat(2) may still be answered
 * from the kernel's attribute cache, so ask statfs(2), which always reaches the daemon; and
 * a daemon pid in the source that no longer exists settles it.
 */
export function isStale (path: string): boolean {
  const entry = nbdtsMountAt(path)
  const pid = entry === undefined ? undefined : daemonPid(entry)
  if (pid !== undefined && pid !== process.pid) {
    try {
      process.kill(pid, 0)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ESRCH') return true
    }
  }
  try {
    statfsSync(path)
    return false
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOTCONN'
  }
}

/** Runs a mount tool; rejects with a MountError carrying its output ('busy' when it says so). */
export function runTool (command: string, args: string[], extraFds: number[] = [], env?: NodeJS.ProcessEnv): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe', ...extraFds], ...(env !== undefined && { env }) })
    let output = ''
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { output += d })
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { output += d })
    child.on('error', (err) => { reject(new MountError('helper', `${command}: ${err.message}`, { cause: err })) })
    child.on('close', (code) => {
      if (code === 0) {
        resolve()
        return
      }
      const text = output.trim() || `exit ${code}`
      reject(new MountError(/busy/i.test(text) ? 'busy' : 'helper', `${command} ${args.join(' ')}: ${text}`))
    })
  })
}

export interface FuseMountSpec {
  /** The open /dev/fuse descriptor. */
  readonly fd: number
  /** The pinned target (mount-point.ts): mounted through /proc/self/fd, never by path. */
  readonly targetFd: number
  /** The root node's mode (type and permission bits) until the kernel's first GETATTR. */
  readonly rootMode: number
  readonly uid: number
  readonly gid: number
  /** Shown as the mount's source in /proc/mounts. */
  readonly source: string
  /** Everything after fd=, rootmode=, user_id= and group_id=. */
  readonly options: readonly string[]
}

/**
 * mount -i -c -t fuse -o fd=3,rootmode=...,user_id=,group_id=,... SOURCE /proc/self/fd/4
 *
 * -i keeps mount(8) from looking for a mount.fuse helper; -c from canonicalising the target,
 * so mount(2) gets /proc/self/fd/4, which names the pinned inode itself. Mounting returns
 * before the kernel's INIT is answered, so the caller serves it afterwards.
 */
export function mountFuse (spec: FuseMountSpec): Promise<void> {
  const options = ['fd=3', `rootmode=${spec.rootMode.toString(8)}`, `user_id=${spec.uid}`, `group_id=${spec.gid}`, ...spec.options]
  return runTool('mount', ['-i', '-c', '-t', 'fuse', '-o', options.join(','), spec.source, '/proc/self/fd/4'], [spec.fd, spec.targetFd])
}

export interface UnmountOptions {
  /** Detach now even if busy (MNT_DETACH); the daemon serves open files until they close. */
  readonly lazy?: boolean
  /**
   * Abort the FUSE connection first: I/O in progress and later fails. Root uses MNT_FORCE
   * (umount -f, which FUSE turns into an abort); others need fusectl mounted.
   */
  readonly force?: boolean
}

const FUSECTL = '/sys/fs/fuse/connections'

/**
 * umount(8) for root, `fusermount3 -u` for everyone else. Busy rejects with reason 'busy'.
 * `path` is a mount point as mountinfo spells it: umount -c does not canonicalise it, which
 * would stat the mount's root and wait on a daemon that may never answer.
 */
export async function unmount (path: string, options: UnmountOptions = {}): Promise<void> {
  if (process.geteuid?.() === 0) {
    await runTool('umount', ['-c', ...(options.force === true ? ['-f'] : []), ...(options.lazy === true ? ['-l'] : []), path])
    return
  }
  if (options.force === true) {
    // fusectl gives each connection's owner its abort file; it must be mounted, which only root can do.
    const entry = nbdtsMountAt(path)
    const abort = entry === undefined ? undefined : `${FUSECTL}/${connectionNumber(entry)}/abort`
    if (abort === undefined || !existsSync(abort)) {
      throw new MountError('helper', `forcing an unmount needs root, or fusectl mounted on ${FUSECTL}`)
    }
    writeFileSync(abort, '1')
  }
  await runTool('fusermount3', ['-u', ...(options.lazy === true || options.force === true ? ['-z'] : []), '--', path])
}
