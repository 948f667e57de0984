/**
 * Mounting through the built CLI, as a user does (`nbdts mount`, which detaches once ready),
 * with a safety net: whatever a failing test leaves mounted is detached when the process exits.
 */
import { spawn, spawnSync } from 'node:child_process'
import { chmodSync, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { nbdts } from './cli.ts'

const mounted = new Set<string>()
process.on('exit', () => {
  for (const target of mounted) spawnSync('umount', ['-l', target], { stdio: 'ignore' })
})

export interface TestMount {
  /** Where the export is: the file mounted over, or DIR/nbd. */
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

/** kill(pid, 0) succeeds: the process exists (and we may signal it). */
export function alive (pid: number): boolean {
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
  const file = kind === 'file' ? target : path.join(target, args.includes('--name') ? args[args.indexOf('--name') + 1]! : 'nbd')
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

export interface RunResult {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/** Runs a command as `nobody` (nogroup, no other groups); never rejects. */
export function asNobody (command: string, args: string[], timeoutMs = 30_000): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = spawn('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', command, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
    const timer = setTimeout(() => { child.kill('SIGKILL') }, timeoutMs)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}

/** Mount points a test made some other way (as another user): detached when the process exits. */
export function detachOnExit (target: string): void {
  mounted.add(target)
}

/**
 * Lets `nobody` open /dev/fuse (mode 0600 on these machines; distributions ship 0666) until
 * the returned function, or the process's exit, puts the old mode back.
 */
export function openDevFuse (): () => void {
  const before = statSync('/dev/fuse').mode & 0o7777
  let restored = false
  const restore = (): void => {
    if (restored) return
    restored = true
    chmodSync('/dev/fuse', before)
  }
  process.on('exit', restore)
  chmodSync('/dev/fuse', before | 0o666)
  return restore
}
