/**
 * `nbdts mount [ CMD ... ] FILE`, as nbdfuse takes it: the mount runs the server (socket
 * activation, a private socket) and owns it. The server lives as long as the mount, is stopped
 * after the flush, and is never restarted; once it dies, I/O fails at once with EIO rather than
 * wait the reconnect delay for a server nobody can bring back.
 */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { existsSync, openSync, closeSync, readFileSync, readSync, writeFileSync, writeSync, fsyncSync } from 'node:fs'
import path from 'node:path'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import '../helpers/assert.ts'
import { nbdts } from '../helpers/cli.ts'
import { alive, isMounted, detachOnExit } from '../helpers/mounts.ts'
import { tempDir } from '../helpers/servers.ts'

const dir = tempDir()

/** The server the mount's daemon runs: its only child named nbdkit. */
function serverOf (daemonPid: number): number {
  const out = execFileSync('pgrep', ['-P', String(daemonPid), '-x', 'nbdkit'], { encoding: 'utf8' }).trim()
  assert.ok(out !== '', `daemon ${daemonPid} runs an nbdkit`)
  return Number(out.split('\n')[0])
}

async function mount (name: string, command: string[], args: string[] = []): Promise<{ file: string, pid: number, log: string }> {
  const file = path.join(dir, name)
  writeFileSync(file, '')
  const pidfile = path.join(dir, `${name}.pid`)
  const log = path.join(dir, `${name}.log`)
  const r = await nbdts(['mount', '[', ...command, ']', file, '--pidfile', pidfile, '--log-file', log, ...args])
  assert.equal(r.code, 0, r.stderr)
  detachOnExit(file)
  assert.match(r.stdout, new RegExp(`mounted \\[ ${command.join(' ')} \\] at ${file}`))
  return { file, pid: Number(readFileSync(pidfile, 'utf8').trim()), log }
}

test('nbdts mount [ nbdkit memory 64M ] FILE: a file that reads what was written; umount flushes, then the server stops', async () => {
  const m = await mount('memory.img', ['nbdkit', 'memory', '64M'])
  const server = serverOf(m.pid)
  const data = Buffer.alloc(1 << 20, 0x5a)
  const fd = openSync(m.file, 'r+')
  writeSync(fd, data, 0, data.length, 3 << 20)
  fsyncSync(fd)
  const back = Buffer.alloc(data.length)
  readSync(fd, back, 0, back.length, 3 << 20)
  closeSync(fd)
  assert.ok(back.equals(data))
  assert.equal((await nbdts(['ctl', '--mount', m.file, 'show', 'mounts'])).code, 0)
  const u = await nbdts(['umount', m.file])
  assert.equal(u.code, 0, u.stderr)
  assert.equal(isMounted(m.file), false)
  assert.equal(alive(m.pid), false, 'the daemon exited')
  for (let i = 0; i < 100 && alive(server); i++) await sleep(20)
  assert.equal(alive(server), false, 'the server went with the mount')
})

test('the server dies: the mount stays, I/O fails with EIO at once (no reconnect delay for a server nobody restarts), umount ends it', async () => {
  const m = await mount('dies.img', ['nbdkit', 'memory', '16M'], ['--reconnect-delay', '10m'])
  process.kill(serverOf(m.pid), 'SIGKILL')
  // Seen by the daemon as the child's exit; the next read then fails rather than wait 10 minutes.
  for (let i = 0; i < 100 && !readFileSync(m.log, 'utf8').includes('was killed by SIGKILL'); i++) await sleep(20)
  assert.match(readFileSync(m.log, 'utf8'), /the server command \(pid \d+\) was killed by SIGKILL: nothing serves this export any more/)
  let failure: (Error & { stderr: Buffer }) | undefined
  try {
    execFileSync('dd', [`if=${m.file}`, 'of=/dev/null', 'bs=4k', 'count=1', 'skip=77', 'iflag=direct'], { stdio: 'pipe', timeout: 30_000 })
  } catch (err) {
    failure = err as Error & { stderr: Buffer }
  }
  assert.ok(failure !== undefined, 'the read failed')
  assert.match(failure.stderr.toString(), /Input\/output error/)
  assert.equal(isMounted(m.file), true, 'the mount stays until unmounted')
  const u = await nbdts(['umount', m.file])
  assert.equal(u.code, 0, u.stderr)
  assert.equal(alive(m.pid), false)
})

test('a server command that fails to start: nbdts mount fails with its exit and its words, and leaves no mount', async () => {
  const file = path.join(dir, 'bad.img')
  writeFileSync(file, '')
  const r = await nbdts(['mount', '[', 'nbdkit', 'no-such-plugin-here', ']', file])
  assert.equal(r.code, 1)
  assert.match(r.stderr, /nbdkit exited with code 1/)
  assert.equal(isMounted(file), false)
  const paths = await nbdts(['mount', '[', 'nbdkit', 'memory', '1M', ']', file, '--path', 'nbd://127.0.0.1/'])
  assert.equal(paths.code, 1)
  assert.match(paths.stderr, /--path needs a URI as path 1/)
  assert.ok(existsSync(file))
})
