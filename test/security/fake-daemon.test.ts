/**
 * A fake daemon for another user. The victim (a uid with no $XDG_RUNTIME_DIR, as under su or
 * cron) keeps its control sockets in /tmp/nbdts-UID; nobody made that directory first and
 * listens there, answering "ok" and "up" and printing escapes. The victim's `nbdts mount` with
 * a PSK URI must send it nothing and fail; so must `ctl` to a socket file that looks like the
 * victim's but is served by nobody (the peer's credentials).
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { chownSync, existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { after, test } from 'node:test'
import { ConfigLock } from '../../src/control/config-lock.ts'
import { controlRequest } from '../../src/control/client.ts'
import { ControlServer } from '../../src/control/control-server.ts'
import { within } from '../helpers/assert.ts'
import { packageFor } from '../helpers/cli.ts'
import { NOBODY, scene } from './scene.ts'

const { root, theirs } = scene()
const cleanups: Array<() => Promise<void> | void> = []
after(async () => { for (const c of cleanups.reverse()) await c() })

/** A uid no one uses here, whose /tmp/nbdts-UID does not exist yet. */
function freeUid (): number {
  for (let uid = 42_000 + (process.pid % 1000); ; uid++) {
    if (!existsSync(`/tmp/nbdts-${uid}`)) return uid
  }
}

/** nobody's fake daemon on `socket` (its directory made first, by nobody); prints every frame it gets. */
async function fakeDaemon (socket: string): Promise<{ got: () => string, stop: () => Promise<void> }> {
  const script = `
    const fs = require('node:fs'), net = require('node:net'), path = require('node:path')
    fs.mkdirSync(path.dirname(${JSON.stringify(socket)}), { recursive: true, mode: 0o755 })
    fs.chmodSync(path.dirname(${JSON.stringify(socket)}), 0o755)
    const frame = (text) => { const b = Buffer.from(text); const h = Buffer.alloc(8); h.writeBigUInt64LE(BigInt(b.length)); return Buffer.concat([h, b]) }
    const server = net.createServer((s) => {
      let buf = Buffer.alloc(0)
      s.on('error', () => {})
      s.on('data', (d) => {
        buf = Buffer.concat([buf, d])
        while (buf.length >= 8 && buf.length >= 8 + Number(buf.readBigUInt64LE(0))) {
          const text = buf.subarray(8, 8 + Number(buf.readBigUInt64LE(0))).toString()
          buf = buf.subarray(8 + Number(buf.readBigUInt64LE(0)))
          console.log('got: ' + JSON.stringify(text))
          s.write(frame(text.startsWith('show') ? JSON.stringify({ state: 'up', export: '\\x1b]0;owned\\x07' }) : 'ok'))
        }
      })
    })
    server.listen(${JSON.stringify(socket)}, () => { fs.chmodSync(${JSON.stringify(socket)}, 0o777); console.log('ready') })
    process.stdin.resume()
  `
  const child = spawn('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', process.execPath, '-e', script], { stdio: ['pipe', 'pipe', 'pipe'] })
  const exited = new Promise<void>((resolve) => child.once('exit', () => { resolve() }))
  let out = ''
  child.stdout.setEncoding('utf8').on('data', (t: string) => { out += t })
  child.stderr.setEncoding('utf8').on('data', (t: string) => { out += t })
  const stop = async (): Promise<void> => { child.kill('SIGKILL'); await exited }
  cleanups.push(stop)
  await within(new Promise<void>((resolve, reject) => {
    child.stdout.on('data', () => { if (out.includes('ready')) resolve() })
    child.once('exit', (code) => { reject(new Error(`the fake daemon exited (${code}): ${out}`)) })
  }), 20_000, 'the fake daemon')
  return { got: () => out.split('\n').filter((l) => l.startsWith('got: ')).join('\n'), stop }
}

function asUid (uid: number, args: string[]): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: '/nonexistent' }
  return new Promise((resolve) => {
    const child = spawn('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', process.execPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
    const timer = setTimeout(() => { child.kill('SIGKILL') }, 30_000)
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }) })
  })
}

test('nobody\'s fake daemon in the victim\'s /tmp/nbdts-UID: nbdts mount sends it nothing and fails', async () => {
  const victim = freeUid()
  const dir = `/tmp/nbdts-${victim}`
  cleanups.push(() => { rmSync(dir, { recursive: true, force: true }) })
  const fake = await fakeDaemon(path.join(dir, 'nbdts.sock'))
  const cli = path.join(packageFor(String(victim), root), 'dist/cli/main.js')
  const home = path.join(root, `home-${victim}`)
  mkdirSync(home, { mode: 0o700 })
  chownSync(home, victim, victim)
  const target = path.join(home, 'disk.img')
  writeFileSync(target, '')
  chownSync(target, victim, victim)
  const uri = `nbds+unix://victim@/?socket=${home}/server.sock&tls-psk-file=${home}/secret-keys.psk`
  const r = await asUid(victim, [cli, 'mount', uri, target])
  assert.notEqual(r.code, 0, `the victim was told: ${r.stdout}`)
  assert.doesNotMatch(r.stdout, /mounted/)
  assert.match(r.stderr, /refusing to talk to \/tmp\/nbdts-\d+\/nbdts\.sock: \/tmp\/nbdts-\d+ belongs to uid \d+/, r.stderr)
  assert.equal(fake.got(), '', 'the fake daemon was sent nothing')
  // ctl, which finds the same socket by default, refuses it too.
  const ctl = await asUid(victim, [cli, 'ctl', 'show', 'mounts'])
  assert.equal(ctl.code, 1, ctl.stdout)
  assert.match(ctl.stderr, /refusing to talk to/, ctl.stderr)
  assert.equal(fake.got(), '')
  await fake.stop()
})

test('a socket file that looks like the victim\'s but is served by nobody: refused on the peer\'s credentials', async () => {
  const victim = freeUid()
  const dir = path.join(theirs, 'sockets')
  const socket = path.join(dir, 'x.sock')
  const fake = await fakeDaemon(socket)
  // As if nobody had got the victim to own both (root plays that part here): only SO_PEERCRED tells.
  chownSync(dir, victim, victim)
  chownSync(socket, victim, victim)
  const cli = path.join(packageFor(String(victim), root), 'dist/cli/main.js')
  const r = await asUid(victim, [cli, 'ctl', '--socket', socket, 'show', 'mounts'])
  assert.equal(r.code, 1, r.stdout)
  assert.match(r.stderr, new RegExp(`refusing to talk to .*x\\.sock: the daemon answering there runs as uid ${NOBODY}`), r.stderr)
  assert.equal(fake.got(), '', 'nothing was sent')
  await fake.stop()
})

test('root\'s umount asks only the verified daemon: another process on the socket its command line names is refused', async () => {
  const socket = path.join(root, 'umount-peer.ctl')
  const server = await ControlServer.listen({ path: socket, lock: new ConfigLock(), run: () => '{"state":"up"}' })
  cleanups.push(() => server.close())
  // The daemon that umount verified is some other pid (here: 1); whoever answers is not it.
  await assert.rejects(controlRequest(socket, 'show mount /x status json', 2000, { uids: [0], pid: 1 }),
    (err: Error & { code?: string }) => err.code === 'CTL_UNTRUSTED' && /process \d+ answers there, not the mount's daemon \(1\)/.test(err.message))
  assert.equal((await controlRequest(socket, 'show mount /x status json', 2000, { uids: [0], pid: process.pid })).ok, true)
})
