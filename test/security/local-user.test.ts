/**
 * Another local user (nobody) against root's daemon: links planted where root writes its
 * pidfile, log, history or control socket, a config path pointed at a secret, and a flood
 * of idle connections to the control socket. Root is never made to write, chmod or delete a
 * file through someone else's link, shows nobody a line of a file it may not read, and stays
 * able to use its own control socket.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import {
  existsSync, lstatSync, mkdirSync, readFileSync, renameSync, statSync, symlinkSync, writeFileSync
} from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { after, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { createLogger } from '../../src/cli/logger.ts'
import { ConfigLock } from '../../src/control/config-lock.ts'
import { controlRequest } from '../../src/control/client.ts'
import { ControlServer } from '../../src/control/control-server.ts'
import { Daemon } from '../../src/daemon/daemon.ts'
import { DaemonCommands } from '../../src/daemon/commands.ts'
import { parseCommand } from '../../src/control/grammar.ts'
import { within } from '../helpers/assert.ts'
import { CLI, nbdts } from '../helpers/cli.ts'
import { isMounted, mountExport } from '../helpers/mounts.ts'
import { startNbdkit, type RunningServer } from '../helpers/servers.ts'
import { assertUntouched, NOBODY, scene, SECRET } from './scene.ts'

const { root, theirs, victim: freshVictim } = scene()

/** Runs `script` (a node -e program) as nobody; resolves with the child once it printed `ready`. */
function asNobody (script: string): Promise<{ pid: number, output: () => string, stop: () => Promise<void> }> {
  const child = spawn('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', process.execPath, '-e', script], { stdio: ['pipe', 'pipe', 'pipe'] })
  let out = ''
  child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d })
  child.stderr.setEncoding('utf8').on('data', (d: string) => { out += d })
  const exited = new Promise<void>((resolve) => child.once('exit', () => { resolve() }))
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    await exited
  }
  children.push(stop)
  return within(new Promise((resolve, reject) => {
    child.stdout.on('data', () => { if (out.includes('ready')) resolve({ pid: child.pid!, output: () => out, stop }) })
    child.once('exit', (code) => { reject(new Error(`nobody's script exited (${code}): ${out}`)) })
  }), 20_000, "nobody's script")
}

const children: Array<() => Promise<void>> = []
const closers: Array<() => Promise<void>> = []
after(async () => {
  for (const stop of children) await stop()
  for (const close of closers.reverse()) await close().catch(() => {})
})

async function controlServer (socket: string, options: { idleTimeoutMs?: number } = {}): Promise<{ server: ControlServer, ran: string[] }> {
  const ran: string[] = []
  const server = await ControlServer.listen({
    path: socket,
    lock: new ConfigLock(),
    run: (command) => { ran.push(command.kind); return command.kind === 'show' ? 'state: CONNECTED' : 'ok' },
    ...options
  })
  closers.push(() => server.close())
  return { server, ran }
}

// ── the control socket ────────────────────────────────────────────────────────────────────

test('130+ idle connections as nobody: root still gets show and shutdown answered; nobody holds at most its share', async () => {
  const socket = path.join(root, 'flood.ctl')
  const { server, ran } = await controlServer(socket)
  const flooder = await asNobody(`
    const net = require('node:net')
    let settled = 0, open = 0, refused = 0
    const sockets = []
    for (let i = 0; i < 140; i++) {
      const s = net.connect(${JSON.stringify(socket)})
      sockets.push(s)
      s.on('connect', () => { open++; if (++settled === 140) setTimeout(report, 500) })
      s.on('data', (d) => { if (d.includes('too many')) refused++ })
      s.on('error', () => { if (++settled === 140) setTimeout(report, 500) })
    }
    function report () {
      const held = sockets.filter((s) => !s.destroyed && s.readyState === 'open').length
      console.log('ready ' + JSON.stringify({ open, refused, held }))
    }
    process.stdin.resume()
  `)
  const clients = server.clients
  assert.ok(clients.filter((c) => c.uid === NOBODY).length <= 16, `nobody holds ${clients.length} slots`)
  const report = JSON.parse(flooder.output().slice(flooder.output().indexOf('{'))) as { refused: number }
  assert.ok(report.refused >= 120, `the excess was refused with a reason (${report.refused})`)
  const show = await controlRequest(socket, 'show status')
  assert.equal(show.ok, true, show.text)
  const shutdown = await controlRequest(socket, 'shutdown')
  assert.equal(shutdown.ok, true, shutdown.text)
  assert.deepEqual(ran, ['show', 'shutdown'])
  await flooder.stop()
})

test('a connection that starts no request is closed after the idle timeout, counted from accept', async () => {
  const socket = path.join(root, 'idle.ctl')
  await controlServer(socket, { idleTimeoutMs: 300 })
  const s = net.connect(socket)
  s.on('error', () => {})
  s.resume()
  await within(new Promise<void>((resolve) => s.once('close', () => { resolve() })), 5000, 'the idle close')
  // One that asked something is timed again from its reply.
  const t = net.connect(socket)
  t.on('error', () => {})
  t.resume()
  const frame = Buffer.alloc(8 + 11)
  frame.writeBigUInt64LE(11n, 0)
  frame.write('show status', 8)
  t.write(frame)
  await within(new Promise<void>((resolve) => t.once('close', () => { resolve() })), 5000, 'the idle close after a reply')
})

test('the control socket path: a file or a link there is never replaced, chmodded or deleted', async () => {
  const file = freshVictim()
  await assert.rejects(controlServer(file), /is not a socket; refusing to replace it/)
  assertUntouched(file)
  const link = path.join(theirs, 'link.ctl')
  const target = freshVictim()
  symlinkSync(target, link)
  await assert.rejects(controlServer(link), /is a symbolic link; refusing to replace it/)
  assertUntouched(target)
  assert.ok(lstatSync(link).isSymbolicLink(), 'the link is left alone')
})

test('the control socket path: a link swapped in right after bind is not chmodded through', async () => {
  const victim = freshVictim()
  const socket = path.join(root, 'race.ctl')
  // The attacker's best moment: the socket was just bound, the daemon has not yet set its mode.
  const listen = net.Server.prototype.listen
  net.Server.prototype.listen = function (this: net.Server, ...args: unknown[]) {
    this.prependOnceListener('listening', () => {
      if (existsSync(socket)) renameSync(socket, `${socket}.moved`)
      symlinkSync(victim, socket)
    })
    return (listen as (...a: unknown[]) => net.Server).apply(this, args)
  } as typeof listen
  try {
    await controlServer(socket).catch(() => undefined)
  } finally {
    net.Server.prototype.listen = listen
  }
  assertUntouched(victim)
})

test('close removes the socket only while it is still ours', async () => {
  const socket = path.join(root, 'mine.ctl')
  const { server } = await controlServer(socket)
  assert.equal(lstatSync(socket).mode & 0o777, 0o666, 'anyone may connect')
  assert.ok(lstatSync(socket).isSocket())
  renameSync(socket, `${socket}.old`)
  writeFileSync(socket, 'not the daemon\'s\n')
  await server.close()
  assert.equal(readFileSync(socket, 'utf8'), 'not the daemon\'s\n')
})

// ── pidfile and log ───────────────────────────────────────────────────────────────────────

test('log file: opened once without following links; a link swapped in later gets nothing', () => {
  const victim = freshVictim()
  const link = path.join(theirs, 'd.log')
  symlinkSync(victim, link)
  assert.throws(() => createLogger('info', link), /symbolic link/)
  const file = path.join(root, 'daemon.log')
  const log = createLogger('info', file)
  assert.equal(statSync(file).mode & 0o777, 0o640)
  log('info', 'first')
  renameSync(file, `${file}.rotated`)
  symlinkSync(victim, file)
  log('info', 'second')
  assertUntouched(victim)
  assert.match(readFileSync(`${file}.rotated`, 'utf8'), /first\n.*second\n/)
})

test('nbdts mount with a pidfile or log file that is someone else\'s link fails before writing anything', async () => {
  const server: RunningServer = await startNbdkit(root, ['memory', '1M'], 'mount-links')
  closers.push(() => server.stop('SIGKILL'))
  for (const flag of ['--pidfile', '--log-file']) {
    const victim = freshVictim()
    const link = path.join(theirs, `m${flag}`)
    symlinkSync(victim, link)
    const target = path.join(root, `m${flag}.img`)
    writeFileSync(target, '')
    const r = await nbdts(['mount', server.uri(), target, flag, link, '--control-socket', path.join(root, `m${flag}.ctl`)], { timeoutMs: 30_000 })
    if (isMounted(target)) await nbdts(['umount', target])
    assert.equal(r.code, 1, `${flag}: ${r.stdout}${r.stderr}`)
    if (flag === '--pidfile') assert.match(r.stderr, /a symbolic link \(not followed\)/)
    assertUntouched(victim)
  }
})

test('nbdts mount: a live daemon\'s pidfile refuses a second daemon', async () => {
  const server: RunningServer = await startNbdkit(root, ['memory', '1M'], 'pid-live')
  closers.push(() => server.stop('SIGKILL'))
  const first = await mountExport(root, server.uri(), 'live.img', ['--control-socket', path.join(root, 'live.ctl')])
  closers.push(() => first.unmount())
  const pidfile = path.join(root, 'live.img.pid')
  const target = path.join(root, 'second.img')
  writeFileSync(target, '')
  const r = await nbdts(['mount', server.uri(), target, '--pidfile', pidfile, '--control-socket', path.join(root, 'second.ctl')], { timeoutMs: 30_000 })
  if (isMounted(target)) await nbdts(['umount', target])
  assert.equal(r.code, 1, r.stdout)
  assert.match(r.stderr, new RegExp(`locked: nbdts is already running as pid ${first.pid}`))
  assert.equal(readFileSync(pidfile, 'utf8'), `${first.pid}\n`)
  await first.unmount()
})

// ── config file and show config ───────────────────────────────────────────────────────────

test('nbdts mount --config through someone else\'s link: refused, and the file it points at is not quoted', async () => {
  const link = path.join(theirs, 'mount.conf')
  symlinkSync(freshVictim(), link)
  const target = path.join(root, 'config-link.img')
  writeFileSync(target, '')
  const r = await nbdts(['mount', '--foreground', 'nbd+unix:///?socket=/nowhere', target, '--config', link], { timeoutMs: 30_000 })
  assert.equal(r.code, 1)
  assert.match(r.stderr, /a symbolic link \(not followed\)/)
  assert.ok(!r.stderr.includes('s3cr3t'), r.stderr)
})


test('show config: a failed reconfigure shows nobody file:line only, and never a line of the file', async () => {
  const file = path.join(root, 'secret.conf')
  writeFileSync(file, '[daemon]\nlog-level = "info"\n')
  const daemon = await Daemon.start({ controlSocket: path.join(root, 'secret.ctl'), configFile: file, log: Object.assign(() => {}, { level: 'info' as const }) })
  closers.push(async () => { await daemon.shutdown('force', 'test over'); await daemon.stopped })
  const commands = new DaemonCommands(daemon)
  writeFileSync(file, `# keep\n${SECRET}`)
  const as = (uid: number) => ({ client: { id: 1, state: 'WORK', privileged: uid === 0, uid, pid: 1, connectedMs: 0, requests: 1 } as const })
  assert.equal(await commands.run(parseCommand('reconfigure'), as(0)), 'ok')
  let shown = ''
  for (let i = 0; i < 100 && !/failed/.test(shown); i++) {
    await sleep(10)
    shown = await commands.run(parseCommand('show config'), as(NOBODY))
  }
  assert.match(shown, new RegExp(`last-reconfigure: failed at \\S+: ${file.replace(/[.]/g, '\\.')}:2$`, 'm'))
  assert.ok(!shown.includes('s3cr3t'), shown)
  const forRoot = await commands.run(parseCommand('show config'), as(0))
  assert.match(forRoot, /:2: not valid TOML/)
  assert.ok(!forRoot.includes('s3cr3t'), 'not even root is shown the line: it can read the file itself')
})

// ── ctl -k history ────────────────────────────────────────────────────────────────────────

test('ctl -k keeps no history under a $HOME root does not own, and writes its own 0600 without following links', async () => {
  const socket = path.join(root, 'history.ctl')
  await controlServer(socket)
  const victim = freshVictim()
  symlinkSync(victim, path.join(theirs, '.nbdts_history'))
  const session = (home: string): Promise<number | null> => new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, 'ctl', '-k', '--socket', socket], { stdio: ['pipe', 'ignore', 'ignore'], env: { ...process.env, HOME: home } })
    child.stdin.end('show status\nquit\n')
    child.on('close', resolve)
  })
  assert.equal(await session(theirs), 0)
  assertUntouched(victim)
  // Our own $HOME, where someone left a link anyway (a shared home, a restored backup).
  const home = path.join(root, 'home')
  mkdirSync(home)
  symlinkSync(victim, path.join(home, '.nbdts_history'))
  assert.equal(await session(home), 0)
  assertUntouched(victim)
  const clean = path.join(root, 'home2')
  mkdirSync(clean)
  assert.equal(await session(clean), 0)
  // (readline keeps no lines from a pipe, so the file is empty; what matters is whose it is.)
  const history = path.join(clean, '.nbdts_history')
  assert.equal(statSync(history).mode & 0o777, 0o600)
  assert.equal(statSync(history).uid, 0)
})
