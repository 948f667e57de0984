/**
 * Who keeps a mount busy, for the message that refuses to unmount it: loop devices backed by
 * the file (/sys/block/loop*\/loop/backing_file), processes with it open, mapped, or with a
 * working directory inside a directory mount, and mounts on top of or inside it. Best effort:
 * what we may not read (another user's /proc entries, when not root) is left out.
 */
import { closeSync, openSync, readdirSync, readFileSync, readlinkSync, readSync } from 'node:fs'
import { performance } from 'node:perf_hooks'
import { printable } from '../util/printable.ts'
import { mounts } from './mount-table.ts'

const SHOWN = 5
/**
 * The scan runs on the daemon's event loop, and any user can make a process with tens of
 * thousands of mappings: each `maps` is read up to this much. A mapping hidden past it is only
 * missing from the message; the kernel still refuses to unmount a busy mount.
 */
const MAPS_BYTES = 256 * 1024
/**
 * And however many processes and descriptors a user makes, the scan stops after this long: the
 * processes not looked at are only missing from the message (the kernel has the last word).
 */
const SCAN_BUDGET_MS = 250

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
  const deadline = performance.now() + SCAN_BUDGET_MS
  for (const pid of safe(() => readdirSync('/proc'), [])) {
    if (performance.now() > deadline) break
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue
    const base = `/proc/${pid}`
    const fds = safe(() => readdirSync(`${base}/fd`), [])
    const uses = fds.some((fd) => inside(safe(() => readlinkSync(`${base}/fd/${fd}`), ''))) ||
      inside(safe(() => readlinkSync(`${base}/cwd`), '')) ||
      safe(() => readHead(`${base}/maps`, MAPS_BYTES), '').split('\n').some((line) => inside(line.slice(line.indexOf('/'))))
    // Any process sets its own comm (ESC and BEL included): escaped before root's terminal sees it.
    if (uses) found.push(`pid ${pid} (${printable(safe(() => readFileSync(`${base}/comm`, 'utf8').replace(/\n$/, ''), '?'))})`)
  }
  return found
}

function mountsInside (mountPoint: string): string[] {
  return mounts().filter((m) => m.mountPoint.startsWith(`${mountPoint}/`)).map((m) => `a mount on ${printable(m.mountPoint)}`)
}

/** The first `max` bytes of a file (procfs files report size 0, so read until EOF or max). */
function readHead (file: string, max: number): string {
  const fd = openSync(file, 'r')
  try {
    const buf = Buffer.allocUnsafe(max)
    let n = 0
    for (let got = -1; got !== 0 && n < max; n += got) got = readSync(fd, buf, n, max - n, null)
    return buf.toString('utf8', 0, n)
  } finally {
    closeSync(fd)
  }
}

function safe<T> (read: () => T, fallback: T): T {
  try {
    return read()
  } catch {
    return fallback
  }
}
