/**
 * Is the pid in a mount's source ("nbdts:PID") really the daemon serving it? Any user can make
 * a FUSE mount whose source says `nbdts:1` (fusermount3 -o fsname=...), so the source alone
 * must not decide what `nbdts umount` waits for, and nothing is ever signalled on its word.
 *
 *   the process runs as the mount's owner (the kernel's user_id=, which a user cannot forge)
 *   its command line is an nbdts mount or an nbdts daemon (which holds many mounts): run as
 *     nbdts (npm's bin link), or as the bin or the CLI module by path (bin.cjs, main.js)
 *   it holds /dev/fuse open
 *
 * A process passing all three is one the mount's owner started to serve a FUSE mount, so
 * waiting for it (or, for root, anything else) concerns nobody else.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs'
import { daemonPid, isStale, mountOwner, type MountEntry } from './mount-table.ts'

/** `args`: the daemon's command line (an `nbdts daemon` serves other mounts too). */
export type DaemonCheck = { readonly pid: number, readonly args: readonly string[] } | { readonly problem: string }

export function verifyDaemon (entry: MountEntry): DaemonCheck {
  const pid = daemonPid(entry)
  if (pid === undefined) return { problem: `its source "${entry.source}" names no daemon` }
  const owner = mountOwner(entry)
  if (owner === undefined) return { problem: 'the kernel does not say who made it' }
  let status: string
  let args: string[]
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8')
    args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
  } catch {
    return { problem: `no process ${pid} is running` }
  }
  const uids = /^Uid:\s+(\d+)\s+(\d+)/m.exec(status)
  if (uids === null || Number(uids[2]) !== owner) {
    return { problem: `process ${pid} runs as uid ${uids?.[2] ?? '?'}, not as the mount's owner (uid ${owner})` }
  }
  if (!(args.includes('mount') || args.includes('daemon')) || !args.some((a) => /(^|\/)(nbdts|main\.[jt]s|bin\.c[jt]s)$/.test(a))) {
    return { problem: `process ${pid} is not an nbdts mount daemon` }
  }
  let fds: string[]
  try {
    fds = readdirSync(`/proc/${pid}/fd`)
  } catch {
    return { problem: `the descriptors of process ${pid} cannot be read` }
  }
  const holdsDevice = fds.some((fd) => {
    try {
      return readlinkSync(`/proc/${pid}/fd/${fd}`) === '/dev/fuse'
    } catch {
      return false
    }
  })
  if (!holdsDevice) return { problem: `process ${pid} does not hold /dev/fuse` }
  return { pid, args }
}

/**
 * What a mount of ours looks like from outside: `live` (served by a verified daemon, or by
 * anything when the mount is the caller's own and answers), `stale` (the daemon is gone: it
 * answers ENOTCONN), or `foreign` (another user's mount whose source names someone else;
 * never asked anything, since whoever serves it may never answer).
 */
export function mountState (entry: MountEntry): 'live' | 'stale' | 'foreign' {
  if ('pid' in verifyDaemon(entry)) return 'live'
  const pid = daemonPid(entry)
  if (pid === undefined || !processExists(pid)) return 'stale'
  if (mountOwner(entry) !== (process.geteuid?.() ?? 0)) return 'foreign'
  return isStale(entry.mountPoint) ? 'stale' : 'live'
}

/** kill(pid, 0): true while the process exists (EPERM: it does, and is not ours). */
export function processExists (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}
