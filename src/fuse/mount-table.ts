/**
 * Mounting and unmounting, and what /proc/self/mountinfo says about a path. Mounting goes
 * through mount(8) with the open /dev/fuse handed over as an inherited descriptor (fd 3), so
 * the kernel talks FUSE to us directly; no fusermount, no libfuse.
 */
import { spawn } from 'node:child_process'
import { readFileSync, statfsSync } from 'node:fs'

export const FS_TYPE = 'fuse.nbdts'

export interface MountEntry {
  readonly mountPoint: string
  readonly fsType: string
  readonly source: string
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
    const mountPoint = left.split(' ')[4]
    const [fsType, source] = right.split(' ')
    if (mountPoint !== undefined && fsType !== undefined) {
      entries.push({ mountPoint: unescape(mountPoint), fsType, source: unescape(source ?? '') })
    }
  }
  return entries
}

/** Our mount on `path`, if there is one (the last mount there wins). */
export function nbdtsMountAt (path: string): MountEntry | undefined {
  return mounts().filter((m) => m.mountPoint === path && m.fsType === FS_TYPE).pop()
}

/** The pid of the daemon serving a mount, from its source ("nbdts:PID"). */
export function daemonPid (entry: MountEntry): number | undefined {
  const match = /^nbdts:(\d+)$/.exec(entry.source)
  return match === null ? undefined : Number(match[1])
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

function runTool (command: string, args: string[], extraFd?: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const stdio: Array<'ignore' | 'pipe' | number> = ['ignore', 'pipe', 'pipe']
    if (extraFd !== undefined) stdio.push(extraFd)
    const child = spawn(command, args, { stdio })
    let output = ''
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { output += d })
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { output += d })
    child.on('error', reject)
    child.on('close', (code) => {
      if (code === 0) resolve()
      else reject(new Error(`${command} ${args.join(' ')}: ${output.trim() || `exit ${code}`}`))
    })
  })
}

export interface FuseMountSpec {
  /** The open /dev/fuse descriptor. */
  readonly fd: number
  readonly path: string
  readonly kind: 'file' | 'dir'
  readonly readonly: boolean
  readonly uid: number
  readonly gid: number
  /** Shown as the mount's source in /proc/mounts. */
  readonly source: string
}

/**
 * mount -i -t fuse -o fd=3,rootmode=...,user_id=,group_id=,allow_other,default_permissions
 *
 * -i keeps mount(8) from looking for a mount.fuse helper; the kernel gets the options as they
 * are. Mounting is asynchronous, so the caller can serve the FUSE requests mount(2) triggers.
 */
export function mountFuse (spec: FuseMountSpec): Promise<void> {
  const rootmode = (spec.kind === 'file' ? 0o100000 | (spec.readonly ? 0o444 : 0o644) : 0o040755).toString(8)
  const options = [
    'fd=3', `rootmode=${rootmode}`, `user_id=${spec.uid}`, `group_id=${spec.gid}`,
    'allow_other', 'default_permissions', 'subtype=nbdts', spec.readonly ? 'ro' : 'rw', 'nosuid', 'nodev'
  ]
  return runTool('mount', ['-i', '-t', 'fuse', '-o', options.join(','), spec.source, spec.path], spec.fd)
}

/** umount(8); with `lazy`, detaches now even if files are open (umount -l). */
export function unmount (path: string, lazy = false): Promise<void> {
  return runTool('umount', lazy ? ['-l', path] : [path])
}
