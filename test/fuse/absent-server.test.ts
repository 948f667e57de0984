/**
 * The mount while its server is away: an O_DIRECT caller (sent as a background request under
 * FUSE_ASYNC_DIO, so the kernel never sends INTERRUPT) dies within seconds of SIGKILL; `nbdts
 * umount --force` is back, and the daemon gone, within seconds of a stopped server; a hung
 * server is declared dead after the documented 60 s, not 90.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { after, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import '../helpers/assert.ts'
import { nbdts } from '../helpers/cli.ts'
import { alive, isMounted, mountExport, type TestMount } from '../helpers/mounts.ts'
import { startNbdkit, tempDir, type RunningServer } from '../helpers/servers.ts'

const dir = tempDir()
const stops: Array<() => Promise<void>> = []
after(async () => { for (const s of stops.reverse()) await s().catch(() => {}) })

async function server (name: string): Promise<RunningServer> {
  const s = await startNbdkit(dir, ['memory', '16M'], name)
  stops.push(async () => {
    try { process.kill(s.pid, 'SIGCONT') } catch { /* gone */ }
    await s.stop('SIGKILL')
  })
  return s
}

async function mounted (uri: string, name: string): Promise<TestMount> {
  const m = await mountExport(dir, uri, name)
  stops.push(() => m.unmount())
  return m
}

interface Caller {
  readonly pid: number
  /** Resolves when the process has exited. */
  readonly exited: Promise<void>
}

/** dd with O_DIRECT, one block, reading (`in`) or writing (`out`) the file. */
function directDd (file: string, direction: 'in' | 'out'): Caller {
  const args = direction === 'in'
    ? [`if=${file}`, 'of=/dev/null', 'iflag=direct', 'bs=4096', 'count=1', 'skip=5', 'status=none']
    : ['if=/dev/zero', `of=${file}`, 'oflag=direct', 'conv=notrunc', 'bs=4096', 'count=1', 'seek=7', 'status=none']
  const child = spawn('dd', args, { stdio: 'ignore' })
  const exited = new Promise<void>((resolve) => { child.once('exit', () => { resolve() }) })
  child.once('error', () => {})
  stops.push(async () => { child.kill('SIGKILL'); await exited })
  return { pid: child.pid!, exited }
}

/** The process state letter from /proc/PID/stat ('D': uninterruptible sleep). */
function state (pid: number): string {
  try {
    return /\) (\S) /.exec(readFileSync(`/proc/${pid}/stat`, 'utf8'))?.[1] ?? '?'
  } catch {
    return 'gone'
  }
}

async function msUntil (done: Promise<unknown>, limitMs: number): Promise<number> {
  const started = Date.now()
  await Promise.race([done, sleep(limitMs)])
  return Date.now() - started
}

describe('the mount while its server is away', () => {
  test('O_DIRECT reader and writer waiting on a dead server (uninterruptible) die within seconds of SIGKILL', async () => {
    const s = await server('dio-kill')
    const m = await mounted(s.uri(), 'dio-kill.img')
    await s.stop('SIGKILL')
    const reader = directDd(m.file, 'in')
    const writer = directDd(m.file, 'out')
    await sleep(2500)
    assert.equal(state(reader.pid), 'D', 'the reader waits in D state: no INTERRUPT will come')
    assert.equal(state(writer.pid), 'D', 'and so does the writer')
    process.kill(reader.pid, 'SIGKILL')
    process.kill(writer.pid, 'SIGKILL')
    const [r, w] = await Promise.all([msUntil(reader.exited, 20_000), msUntil(writer.exited, 20_000)])
    assert.ok(r < 4000, `the reader went ${r} ms after SIGKILL (the reconnect delay is 30 s)`)
    assert.ok(w < 4000, `the writer went ${w} ms after SIGKILL`)
    assert.match(m.logText(), /its caller \(thread \d+\) is being killed; answered EINTR/)
    await s.restart()
  })

  test('umount --force with a stopped server and a caller blocked in it: back within seconds, daemon gone within seconds', async () => {
    const s = await server('force-stopped')
    const m = await mounted(s.uri(), 'force-stopped.img')
    process.kill(s.pid, 'SIGSTOP')
    const reader = directDd(m.file, 'in')
    await sleep(1000)
    const started = Date.now()
    const u = await nbdts(['umount', '--force', m.target], { timeoutMs: 90_000 })
    const took = Date.now() - started
    assert.equal(u.code, 0, u.stderr)
    assert.ok(took < 8000, `nbdts umount --force took ${took} ms: ${u.stdout}`)
    assert.match(u.stdout, /unmounted \(forced: its I\/O was aborted\)/)
    assert.equal(isMounted(m.target), false)
    for (let i = 0; i < 100 && alive(m.pid); i++) await sleep(50)
    assert.equal(alive(m.pid), false, `the daemon is gone within ${Date.now() - started} ms`)
    assert.ok(await msUntil(reader.exited, 10_000) < 10_000, 'the blocked reader got its error')
    assert.doesNotMatch(m.logText(), /unmounted from outside/, 'the daemon did the forced unmount itself')
  })

  test('a hung server is declared dead after the documented 60 s: the probe\'s own bytes do not restart the clock', async () => {
    const s = await server('hung')
    const m = await mounted(s.uri(), 'hung.img')
    process.kill(s.pid, 'SIGSTOP')
    const started = Date.now()
    const reader = directDd(m.file, 'in')
    const verdict = /no reply to \S+ within 60000 ms/
    while (!verdict.test(m.logText()) && Date.now() - started < 80_000) await sleep(200)
    const took = Date.now() - started
    assert.match(m.logText(), verdict)
    assert.ok(took >= 59_000 && took < 66_000, `declared dead after ${took} ms, not 60 s`)
    process.kill(s.pid, 'SIGCONT')
    process.kill(reader.pid, 'SIGKILL')
    await reader.exited
  })
})
