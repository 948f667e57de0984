/**
 * `nbdts ctl watch` as a person sees it: in a tmux session of its own (new-session -d,
 * capture-pane, send-keys), over a daemon with a busy and an idle mount.
 */
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { after, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { renderWatch, sparkline } from '../../src/cli/watch.ts'
import '../helpers/assert.ts'
import { CLI } from '../helpers/cli.ts'
import { startDaemon } from '../helpers/daemon.ts'
import { startNbdkit, tempDir } from '../helpers/servers.ts'

const dir = tempDir()
const session = 'watch'
// A tmux server of our own, on a socket in our directory (removed with it).
const tmuxSocket = path.join(dir, 'tmux.sock')
const cleanups: Array<() => Promise<void> | void> = []
after(async () => { for (const c of cleanups.reverse()) await c() })

const tmux = (...args: string[]): { status: number | null, stdout: string } => {
  const r = spawnSync('tmux', ['-u', '-S', tmuxSocket, ...args], { encoding: 'utf8' })
  return { status: r.status, stdout: r.stdout }
}

test('sparklines scale to the busiest rate on screen; the screen fits its width', () => {
  assert.equal(sparkline([0, 1, 2, 4, 8], 8), ' ▂▃▅█')
  const rows = [{ file: '/srv/a.img', state: 'up', connections: ['CONNECTED'], size: 1 << 26, iops: 1234.4, mibps: 48.25, p99ms: 1.234, inFlight: 3 }]
  const screen = renderWatch(rows, new Map([['/srv/a.img', [10, 20, 48.25]]]), 80, 'head')
  assert.ok(screen.every((line) => line.length <= 80))
  assert.match(screen.join('\n'), /\/srv\/a\.img +up +ok +64M +1234 +48\.3 +1\.2ms +3 +▂▄█/)
})

test('nbdts ctl watch in tmux: a line per mount, refreshed each second, a sparkline for the busy one; q quits', async (t) => {
  const server = await startNbdkit(dir, ['memory', '64M'], 'w')
  cleanups.push(() => server.stop('SIGKILL'))
  const busy = path.join(dir, 'busy.img')
  const idle = path.join(dir, 'idle.img')
  writeFileSync(busy, '')
  writeFileSync(idle, '')
  const d = await startDaemon(dir, 'w', {
    config: `[defaults]\nconnections = 1\n\n[[mount]]\nuri = "${server.uri()}"\nfile = "${busy}"\n\n[[mount]]\nuri = "${server.uri()}"\nfile = "${idle}"\n`
  })
  cleanups.push(() => d.stop())
  const load = spawn('fio', ['--name=w', `--filename=${busy}`, '--rw=randrw', '--bs=64k', '--direct=1', '--ioengine=psync', '--size=32M',
    '--runtime=4', '--time_based', '--verify_state_save=0', '--output=/dev/null'], { stdio: 'ignore' })
  cleanups.push(() => { load.kill('SIGKILL') })
  const loadDone = new Promise((resolve) => load.once('exit', resolve))

  assert.equal(tmux('new-session', '-d', '-s', session, '-x', '150', '-y', '12', `${process.execPath} ${CLI} ctl --socket ${d.socket} watch`).status, 0)
  cleanups.push(() => { tmux('kill-server') })
  let screen = ''
  for (let i = 0; i < 100 && !/[▁▂▃▄▅▆▇█]{3}/.test(screen); i++) {
    await sleep(100)
    screen = tmux('capture-pane', '-p', '-t', session).stdout
  }
  t.diagnostic(`the screen:\n${screen}`)
  assert.match(screen, new RegExp(`^nbdts ctl watch +${d.socket.replace(/[.]/g, '\\.')} +\\S+.* 2 mounts$`, 'm'))
  assert.match(screen, /^FILE +STATE +CONN +SIZE +IOPS +MiB\/s +P99 +INFL +MiB\/s, last minute$/m)
  assert.match(screen, new RegExp(`^${busy} +up +ok +64M +\\d+ +[\\d.]+ +\\S+ +\\d+ +.*[▁▂▃▄▅▆▇█]{3}`, 'm'), 'three seconds of throughput on the busy mount')
  assert.match(screen, new RegExp(`^${idle} +up +ok +64M +0 +0\\.0 +`, 'm'))
  const first = screen.split('\n')[0]
  await sleep(1200)
  assert.notEqual(tmux('capture-pane', '-p', '-t', session).stdout.split('\n')[0], first, 'redrawn (its clock moved on)')

  assert.equal(tmux('send-keys', '-t', session, 'q').status, 0)
  for (let i = 0; i < 100 && tmux('has-session', '-t', session).status === 0; i++) await sleep(50)
  assert.notEqual(tmux('has-session', '-t', session).status, 0, 'q quit watch, and its session ended with it')
  await loadDone
})
