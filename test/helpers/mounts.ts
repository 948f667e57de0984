/**
 * Mounting through the built CLI, as a user does (`nbdts mount`, which detaches once ready),
 * with a safety net: whatever a failing test leaves mounted is detached when the process exits.
 */
import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { nbdts } from './cli.ts'

const mounted = new Set<string>()
process.on('exit', () => {
  for (const target of mounted) spawnSync('umount', ['-l', target], { stdio: 'ignore' })
})

export interface TestMount {
  /** Where the export is: the file mounted over, or DIR/disk. */
  readonly file: string
  readonly target: string
  readonly pid: number
  readonly log: string
  logText: () => string
  /** nbdts umount; resolves once the daemon is gone. */
  unmount: () => Promise<void>
}

export function isMounted (target: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === target && l.includes(' - fuse.nbdts '))
}

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

export async function mountExport (dir: string, uri: string, name: string, args: string[] = [], kind: 'file' | 'dir' = 'file'): Promise<TestMount> {
  const target = path.join(dir, name)
  if (kind === 'file') writeFileSync(target, '')
  else spawnSync('mkdir', ['-p', target])
  const log = path.join(dir, `${name}.log`)
  const pidfile = path.join(dir, `${name}.pid`)
  const r = await nbdts(['mount', uri, target, '--pidfile', pidfile, '--log-file', log, '--log-level', 'debug', ...args])
  if (r.code !== 0) throw new Error(`nbdts mount failed (${r.code}): ${r.stderr}${existsSync(log) ? readFileSync(log, 'utf8') : ''}`)
  mounted.add(target)
  const pid = Number(readFileSync(pidfile, 'utf8').trim())
  const file = kind === 'file' ? target : path.join(target, args.includes('--name') ? args[args.indexOf('--name') + 1]! : 'disk')
  return {
    file,
    target,
    pid,
    log,
    logText: () => existsSync(log) ? readFileSync(log, 'utf8') : '',
    unmount: async () => {
      if (isMounted(target)) {
        const u = await nbdts(['umount', target], { timeoutMs: 60_000 })
        if (u.code !== 0) throw new Error(`nbdts umount failed: ${u.stderr}`)
      }
      for (let i = 0; i < 500 && alive(pid); i++) await sleep(20)
      mounted.delete(target)
    }
  }
}
