/**
 * Who keeps a mount busy, for the message that refuses to unmount it: loop devices backed by
 * the file (/sys/block/loop*\/loop/backing_file), processes with it open, mapped, or with a
 * working directory inside a directory mount, and mounts on top of or inside it. Best effort:
 * what we may not read (another user's /proc entries, when not root) is left out.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs'
import { mounts } from './mount-table.ts'

const SHOWN = 5

/** Holders of `file` (the export) under `mountPoint`, one phrase each. */
export function holdersOf (file: string, mountPoint: string): string[] {
  const found = [...loopDevices(file), ...processes(file, mountPoint), ...mountsInside(mountPoint)]
  if (found.length <= SHOWN) return found
  return [...found.slice(0, SHOWN), `${found.length - SHOWN} more`]
}

/** "held by /dev/loop0 (losetup -d /dev/loop0) and pid 12 (dd)", or a generic phrase. */
export function describeHolders (file: string, mountPoint: string): string {
  const holders = holdersOf(file, mountPoint)
  return holders.length === 0 ? 'something still uses it' : `in use by ${holders.join(', ')}`
}

function loopDevices (file: string): string[] {
  const found: string[] = []
  for (const name of safe(() => readdirSync('/sys/block'), [])) {
    if (!name.startsWith('loop')) continue
    const backing = safe(() => readFileSync(`/sys/block/${name}/loop/backing_file`, 'utf8').trim(), '')
    if (backing === file) found.push(`/dev/${name} (losetup -d /dev/${name})`)
  }
  return found
}

function processes (file: string, mountPoint: string): string[] {
  const inside = (p: string): boolean => p === file || p === mountPoint || p.startsWith(`${mountPoint}/`)
  const found: string[] = []
  for (const pid of safe(() => readdirSync('/proc'), [])) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue
    const base = `/proc/${pid}`
    const fds = safe(() => readdirSync(`${base}/fd`), [])
    const uses = fds.some((fd) => inside(safe(() => readlinkSync(`${base}/fd/${fd}`), ''))) ||
      inside(safe(() => readlinkSync(`${base}/cwd`), '')) ||
      safe(() => readFileSync(`${base}/maps`, 'utf8'), '').split('\n').some((line) => inside(line.slice(line.indexOf('/'))))
    if (uses) found.push(`pid ${pid} (${safe(() => readFileSync(`${base}/comm`, 'utf8').trim(), '?')})`)
  }
  return found
}

function mountsInside (mountPoint: string): string[] {
  return mounts().filter((m) => m.mountPoint.startsWith(`${mountPoint}/`)).map((m) => `a mount on ${m.mountPoint}`)
}

function safe<T> (read: () => T, fallback: T): T {
  try {
    return read()
  } catch {
    return fallback
  }
}
