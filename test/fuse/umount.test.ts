/**
 * Ending a mount: `nbdts umount` on a busy mount (a loop device attached) refuses and names the
 * holder, --lazy detaches and serves until the last user lets go, --force aborts; the daemon's
 * signals (SIGHUP reconfigures, SIGUSR1/2 and SIGPIPE change nothing, SIGQUIT and SIGINT
 * unmount cleanly: no signal leaves a dead mount); PR_SET_IO_FLUSHER on the daemon's threads.
 */
import assert from 'node:assert/strict'
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { after, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import '../helpers/assert.ts'
import { nbdts } from '../helpers/cli.ts'
import { alive, isMounted, mountExport, type TestMount } from '../helpers/mounts.ts'
import { run, startNbdkit, tempDir, type RunningServer } from '../helpers/servers.ts'

const dir = tempDir()
const stops: Array<() => Promise<void>> = []
after(async () => { for (const s of stops.reverse()) await s().catch(() => {}) })

async function server (name: string, args: string[]): Promise<RunningServer> {
  const s = await startNbdkit(dir, args, name)
  stops.push(() => s.stop('SIGKILL'))
  return s
}

async function mounted (uri: string, name: string, args: string[] = []): Promise<TestMount> {
  const m = await mountExport(dir, uri, name, args)
  stops.push(() => m.unmount())
  return m
}

async function attachLoop (file: string): Promise<string> {
  const loop = (await run('losetup', ['-f', '--show', file])).stdout.toString().trim()
  // Only while it still backs our file: a test detaches it itself, and the device's name may
  // meanwhile belong to another test file's loop (running beside this one).
  stops.push(async () => {
    const attached = (await run('losetup', ['-j', file]).catch(() => ({ stdout: Buffer.alloc(0) }))).stdout.toString()
    for (const line of attached.split('\n')) {
      const device = line.split(':')[0]!
      if (device === loop) await run('losetup', ['-d', loop]).catch(() => {})
    }
  })
  return loop
}

async function gone (pid: number, ms = 20_000): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(20)) if (!alive(pid)) return true
  return false
}

/** Reads 64 KiB from a block device with O_DIRECT; resolves 'ok' or the error. */
function readDevice (device: string): Promise<string> {
  return run('dd', [`if=${device}`, 'of=/dev/null', 'bs=4096', 'count=16', 'iflag=direct']).then(() => 'ok', (err: Error) => err.message)
}

// /proc/PID/stat's flags (field 9): PF_MEMALLOC_NOIO and PF_LOCAL_THROTTLE are what
// PR_SET_IO_FLUSHER sets (include/linux/sched.h).
const IO_FLUSHER = 0x00080000 | 0x00100000

/** CAP_SYS_RESOURCE (bit 24) in our effective set: what PR_SET_IO_FLUSHER needs. */
function canSetIoFlusher (): boolean {
  const hex = /^CapEff:\s+([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? '0'
  return (BigInt(`0x${hex}`) & (1n << 24n)) !== 0n
}

function threadFlags (pid: number): number[] {
  return readdirSync(`/proc/${pid}/task`).map((tid) => {
    const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8')
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[6])
  })
}

describe('nbdts umount and the daemon\'s signals', () => {
  test('busy with a loop device: umount refuses naming it and I/O goes on; --lazy detaches and serves until losetup -d', async () => {
    const s = await server('busy', ['memory', '64M'])
    const m = await mounted(s.uri(), 'busy.img')
    const loop = await attachLoop(m.file)
    const refused = await nbdts(['umount', m.target])
    assert.equal(refused.code, 1, refused.stdout)
    assert.match(refused.stderr, new RegExp(`is busy \\(in use by ${loop} \\(losetup -d ${loop}\\)\\), so it stays mounted`))
    assert.match(refused.stderr, /--lazy detaches it .* --force aborts its I\/O/)
    assert.equal(isMounted(m.target), true)
    // Nothing was aborted behind the refusal (the old umount broke the loop device 5 s later).
    await sleep(300)
    assert.equal(await readDevice(loop), 'ok')

    const lazy = await nbdts(['umount', '--lazy', m.target])
    assert.equal(lazy.code, 0, lazy.stderr)
    assert.match(lazy.stdout, new RegExp(`detached; the daemon \\(pid ${m.pid}\\) serves it until the last user lets go`))
    assert.equal(isMounted(m.target), false)
    assert.equal(await readDevice(loop), 'ok', 'the loop device still works after the detach')
    assert.equal(alive(m.pid), true)
    await run('losetup', ['-d', loop])
    assert.equal(await gone(m.pid), true, 'the daemon exits once the loop device lets go')
    assert.match(m.logText(), /shutting down: unmounted/)
  })

  test('SIGTERM on a busy mount detaches it and serves the loop device until losetup -d', async () => {
    const s = await server('term', ['memory', '16M'])
    const m = await mounted(s.uri(), 'term.img')
    const loop = await attachLoop(m.file)
    process.kill(m.pid, 'SIGTERM')
    for (let i = 0; i < 250 && isMounted(m.target); i++) await sleep(20)
    assert.equal(isMounted(m.target), false, 'detached')
    assert.equal(await readDevice(loop), 'ok', 'nothing aborted: the loop device still works')
    assert.equal(alive(m.pid), true, 'the daemon serves on')
    assert.match(m.logText(), /is busy \(in use by \/dev\/loop\d+ .*\): detached it; serving until the last user lets go/)
    await run('losetup', ['-d', loop])
    assert.equal(await gone(m.pid), true)
  })

  test('--force on a busy mount aborts its I/O and the daemon exits', async () => {
    const s = await server('force', ['memory', '16M'])
    const m = await mounted(s.uri(), 'force.img')
    const loop = await attachLoop(m.file)
    const forced = await nbdts(['umount', '--force', m.target])
    assert.equal(forced.code, 0, forced.stderr)
    assert.match(forced.stdout, /unmounted \(forced: its I\/O was aborted\)/)
    assert.equal(isMounted(m.target), false)
    assert.match(await readDevice(loop), /Input\/output error/)
    assert.equal(await gone(m.pid), true)
  })

  test('PR_SET_IO_FLUSHER at start; SIGHUP re-reads --config; SIGUSR1, SIGUSR2 and SIGPIPE leave it serving; SIGQUIT and SIGINT unmount cleanly', async () => {
    const s = await server('signals', ['memory', '4M'])
    const config = path.join(dir, 'signals.conf')
    writeFileSync(config, '[defaults]\nreconnect-delay = "10s"\n')
    const m = await mounted(s.uri(), 'signals.img', ['--config', config])
    // PR_SET_IO_FLUSHER at daemon start: its main thread and the device reader started after
    // have the flags; where root lacks CAP_SYS_RESOURCE (containers), the log says so.
    const flags = threadFlags(m.pid)
    if (canSetIoFlusher()) {
      assert.equal((flags[0]! & IO_FLUSHER), IO_FLUSHER, 'the main thread is an I/O flusher')
      assert.ok(flags.filter((f) => (f & IO_FLUSHER) === IO_FLUSHER).length >= 2, 'and so is the device reader')
    } else {
      assert.equal(flags[0]! & IO_FLUSHER, 0)
      assert.match(m.logText(), /warn: PR_SET_IO_FLUSHER not set \(prctl\(PR_SET_IO_FLUSHER\): EPERM\): a loop device over this mount may deadlock/)
    }

    const serving = (): void => {
      assert.equal(isMounted(m.target), true)
      assert.equal(statSync(m.file).size, 4 * 1024 * 1024)
      assert.equal(readFileSync(m.file).length, 4 * 1024 * 1024)
    }
    const logged = async (pattern: RegExp): Promise<void> => {
      for (let i = 0; i < 250 && !pattern.test(m.logText()); i++) await sleep(20)
      assert.match(m.logText(), pattern)
    }
    writeFileSync(config, '[defaults]\nreconnect-delay = "45s"\n')
    process.kill(m.pid, 'SIGHUP')
    await logged(/SIGHUP: re-reading [^\n]*\n[\s\S]*"reconnect-delay":"45000ms"} applied[\s\S]*reconfigured from .*1 changed/)
    serving()
    for (const signal of ['SIGUSR1', 'SIGUSR2', 'SIGPIPE'] as const) {
      process.kill(m.pid, signal)
      if (signal !== 'SIGPIPE') await logged(new RegExp(`${signal}: client \\{`))
      serving()
    }
    process.kill(m.pid, 'SIGQUIT')
    assert.equal(await gone(m.pid), true)
    assert.equal(isMounted(m.target), false, 'SIGQUIT unmounted')
    assert.match(m.logText(), /SIGQUIT: unmounting[\s\S]*stopped;/)

    const second = await mounted(s.uri(), 'sigint.img')
    process.kill(second.pid, 'SIGINT')
    assert.equal(await gone(second.pid), true)
    assert.equal(isMounted(second.target), false, 'SIGINT unmounted')
  })
})
