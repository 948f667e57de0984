/**
 * The control socket's state machine against real Unix sockets, with a scripted daemon behind
 * it: deadlines, the lock, hang-ups, malformed frames, slow readers, too many clients, and
 * who may run what. Credentials are injected here; the end-to-end test uses real SO_PEERCRED.
 */
import assert from 'node:assert/strict'
import net from 'node:net'
import path from 'node:path'
import { after, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { ControlConnection, controlRequest } from '../../src/control/client.ts'
import { ConfigLock } from '../../src/control/config-lock.ts'
import { ControlServer, type CommandRunner } from '../../src/control/control-server.ts'
import { encodeFrame } from '../../src/control/frame.ts'
import { DAEMON_TOPICS, MOUNT_TOPICS, VERBS, isReadOnly, type Command } from '../../src/control/grammar.ts'
import { LIVE_MOUNT_KEYS, MOUNT_KEY_WORDS } from '../../src/control/words.ts'
import type { PeerCredentials } from '../../src/control/peer-credentials.ts'
import '../helpers/assert.ts'
import { tempDir } from '../helpers/servers.ts'

const dir = tempDir()
const servers: ControlServer[] = []
after(async () => { await Promise.all(servers.map((s) => s.close())) })
let n = 0

interface Harness {
  server: ControlServer
  lock: ConfigLock
  socket: string
  ran: Command[]
}

async function start (options: { run?: CommandRunner, uid?: number, timeoutMs?: number, maxClients?: number } = {}): Promise<Harness> {
  const socket = path.join(dir, `ctl${n++}.sock`)
  const lock = new ConfigLock()
  const ran: Command[] = []
  const run: CommandRunner = options.run ?? ((command) => command.kind === 'show' || command.kind === 'show-mount' ? `topic ${command.topic}` : 'ok')
  const uid = options.uid ?? 0
  const server = await ControlServer.listen({
    path: socket,
    lock,
    run: async (c, ctx) => { ran.push(c); return await run(c, ctx) },
    timeoutMs: options.timeoutMs ?? 1000,
    maxClients: options.maxClients ?? 128,
    credentials: (): PeerCredentials => ({ pid: 1, uid, gid: uid })
  })
  servers.push(server)
  return { server, lock, socket, ran }
}

/** A raw client for frames no well-behaved client would send. */
function raw (socket: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(socket)
    s.once('connect', () => { resolve(s) })
    s.once('error', reject)
  })
}

function closedWithin (s: net.Socket, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    if (s.destroyed) { resolve(true); return }
    const timer = setTimeout(() => { resolve(false) }, ms)
    s.once('close', () => { clearTimeout(timer); resolve(true) })
    s.resume()
  })
}

async function untilIdle (server: ControlServer): Promise<void> {
  for (let i = 0; i < 100 && server.clients.length > 0; i++) await sleep(10)
}

test('one request at a time, in order; replies ok, text or fail', async () => {
  const h = await start()
  const c = await ControlConnection.connect(h.socket)
  assert.deepEqual(await c.request('show stats'), { ok: true, text: 'topic stats' })
  assert.deepEqual(await c.request('set max-in-flight 4'), { ok: true, text: 'ok' })
  const bad = await c.request('frobnicate')
  assert.equal(bad.ok, false)
  assert.match(bad.text, /unknown command "frobnicate".*\(try: help\)/)
  c.close()
  // Pipelined requests are answered in order, one after the other.
  const s = await raw(h.socket)
  const replies: string[] = []
  let buffered = Buffer.alloc(0)
  s.on('data', (d: Buffer) => {
    buffered = Buffer.concat([buffered, d])
    while (buffered.length >= 8 && buffered.length >= 8 + Number(buffered.readBigUInt64LE(0))) {
      const len = Number(buffered.readBigUInt64LE(0))
      replies.push(buffered.subarray(8, 8 + len).toString())
      buffered = buffered.subarray(8 + len)
    }
  })
  s.write(Buffer.concat([encodeFrame('show status'), encodeFrame('show clients'), encodeFrame('show config')]))
  for (let i = 0; i < 100 && replies.length < 3; i++) await sleep(10)
  assert.deepEqual(replies, ['topic status', 'topic clients', 'topic config'])
  s.destroy()
})

test('200 concurrent clients asking show while reconfigure runs over and over: all answered within the deadline', async () => {
  let stop = false
  const h = await start({ timeoutMs: 2000 })
  // A reconfigure loop that keeps taking the lock, like a daemon that is always reconfiguring.
  const reconfiguring = (async () => {
    while (!stop) await h.lock.mutex.runExclusive(() => sleep(30))
  })()
  const started = Date.now()
  const latencies = await Promise.all(Array.from({ length: 200 }, async (_, i) => {
    const t = Date.now()
    const reply = await controlRequest(h.socket, i % 2 === 0 ? 'show stats' : 'show clients json', 2000)
    assert.equal(reply.ok, true)
    return Date.now() - t
  }))
  // Mutating commands wait for the lock, but are answered (done, or timed out) in time too.
  const sets = await Promise.all(Array.from({ length: 20 }, async () => {
    const t = Date.now()
    const reply = await controlRequest(h.socket, 'set log-level info', 2000)
    return { ok: reply.ok, text: reply.text, ms: Date.now() - t }
  }))
  stop = true
  await reconfiguring
  assert.ok(Math.max(...latencies) < 2000, `slowest show took ${Math.max(...latencies)} ms`)
  assert.ok(Date.now() - started < 10_000)
  for (const s of sets) {
    assert.ok(s.ms < 2000 + 300, `a set took ${s.ms} ms`)
    assert.ok(s.ok || s.text === 'timeout', s.text)
  }
  await untilIdle(h.server)
  assert.equal(h.server.clients.length, 0)
  assert.equal(h.lock.waiting, 0)
})

test('a slow client (half a frame, then silence) gets its timeout while others are served', async () => {
  const h = await start({ timeoutMs: 500 })
  const slow = await raw(h.socket)
  const got: Buffer[] = []
  slow.on('data', (d: Buffer) => got.push(d))
  slow.write(encodeFrame('show stats').subarray(0, 11))
  const started = Date.now()
  // Meanwhile, another client is served at once.
  const other = await controlRequest(h.socket, 'show status', 500)
  assert.equal(other.text, 'topic status')
  assert.ok(Date.now() - started < 300)
  assert.ok(await closedWithin(slow, 2000), 'the slow client is closed after its timeout reply')
  const reply = Buffer.concat(got)
  assert.equal(reply.subarray(8).toString(), 'fail\ntimeout')
  assert.ok(Date.now() - started >= 450)
  await untilIdle(h.server)
  assert.equal(h.server.clients.length, 0)
})

test('waiting for the lock has a deadline; a hang-up there leaves no trace', async () => {
  const h = await start({ timeoutMs: 400 })
  let release!: () => void
  const held = h.lock.mutex.runExclusive(() => new Promise<void>((resolve) => { release = resolve }))
  const t = Date.now()
  const timedOut = await controlRequest(h.socket, 'set max-in-flight 2', 400)
  assert.deepEqual(timedOut, { ok: false, text: 'timeout' })
  assert.ok(Date.now() - t >= 380 && Date.now() - t < 900)
  // Read-only commands never wait behind the lock.
  assert.equal((await controlRequest(h.socket, 'show config', 400)).text, 'topic config')
  // A client that hangs up while waiting: out of the queue at once.
  const quitter = await ControlConnection.connect(h.socket)
  void quitter.request('reconnect', 5000).catch(() => {})
  for (let i = 0; i < 50 && h.lock.waiting === 0; i++) await sleep(10)
  assert.equal(h.lock.waiting, 1)
  assert.equal(h.server.clients.find((c) => c.state === 'WAIT_FOR_LOCK')?.state, 'WAIT_FOR_LOCK')
  quitter.close()
  for (let i = 0; i < 50 && h.lock.waiting > 0; i++) await sleep(10)
  assert.equal(h.lock.waiting, 0)
  release()
  await held
  await untilIdle(h.server)
  assert.equal(h.server.clients.length, 0)
  assert.equal(h.ran.filter((c) => c.kind === 'reconnect').length, 0, 'the abandoned command did not run')
  // And the lock still works.
  assert.equal((await controlRequest(h.socket, 'set max-in-flight 3', 400)).text, 'ok')
})

test('malformed frames close the connection; the daemon carries on', async () => {
  const h = await start()
  const cases: Array<[string, Buffer]> = [
    ['length 0', Buffer.alloc(8)],
    ['huge length', Buffer.from('00000000000000f0', 'hex')],
    ['above 4 KiB', (() => { const b = Buffer.alloc(8); b.writeBigUInt64LE(4097n); return b })()],
    ['not UTF-8', Buffer.concat([Buffer.from('0200000000000000', 'hex'), Buffer.from([0xc3, 0x28])])],
    ['megabytes of garbage', Buffer.alloc(4 << 20, 0x41)]
  ]
  for (const [name, bytes] of cases) {
    const s = await raw(h.socket)
    const got: Buffer[] = []
    s.on('data', (d: Buffer) => got.push(d))
    s.write(bytes)
    s.on('error', () => {})
    assert.ok(await closedWithin(s, 2000), `${name}: closed`)
    assert.equal(Buffer.concat(got).length, 0, `${name}: no reply`)
  }
  // Truncated: the client goes away mid-frame.
  const t = await raw(h.socket)
  t.end(encodeFrame('show stats').subarray(0, 12))
  await closedWithin(t, 2000)
  assert.equal((await controlRequest(h.socket, 'show status')).text, 'topic status')
  await untilIdle(h.server)
  assert.equal(h.server.clients.length, 0)
})

test('a client that never reads a large reply does not delay the others', async () => {
  const big = 'x'.repeat(16 << 20)
  const h = await start({ run: (c) => c.kind === 'show-mount' && c.topic === 'stats' ? big : 'small' })
  const hog = await raw(h.socket)
  hog.pause()
  hog.write(encodeFrame('show stats'))
  await sleep(100)
  const t = Date.now()
  const replies = await Promise.all(Array.from({ length: 20 }, () => controlRequest(h.socket, 'show status')))
  assert.ok(replies.every((r) => r.text === 'small'))
  assert.ok(Date.now() - t < 1000)
  assert.equal(h.server.clients.find((c) => c.state === 'SEND')?.state, 'SEND', 'the hog is still being sent to')
  hog.destroy()
  await untilIdle(h.server)
  assert.equal(h.server.clients.length, 0)
})

test('too many clients: the excess is refused with a reason', async () => {
  const h = await start({ maxClients: 3 })
  const held = await Promise.all([0, 1, 2].map(() => ControlConnection.connect(h.socket)))
  for (let i = 0; i < 50 && h.server.clients.length < 3; i++) await sleep(10)
  const refused = await controlRequest(h.socket, 'show stats')
  assert.equal(refused.ok, false)
  assert.match(refused.text, /too many control clients \(the limit is 3\)/)
  for (const c of held) c.close()
  await untilIdle(h.server)
  assert.equal((await controlRequest(h.socket, 'show stats')).ok, true)
})

test('a non-root client is refused every mutating command, in every order and fuzzed; root succeeds', async () => {
  const user = await start({ uid: 1000 })
  const c = await ControlConnection.connect(user.socket)
  for (const text of ['reconnect', 'disconnect', 'reconfigure', 'shutdown', 'set max-in-flight 1', 'set log-level debug', 'set reconnect-delay 1', 'add mount nbd://h/ /a', 'del mount /a force', 'set mount /a max-in-flight 2']) {
    const r = await c.request(text)
    assert.equal(r.ok, false, text)
    assert.match(r.text, /permission denied/, text)
  }
  assert.equal((await c.request('show config')).ok, true)
  assert.equal((await c.request('help')).ok, true)
  // Fuzz: random sequences of every keyword and some values. Whatever parses as a command
  // that changes the daemon must be refused; the runner must never see one.
  const words = [...VERBS, ...DAEMON_TOPICS, ...MOUNT_TOPICS, ...MOUNT_KEY_WORDS, ...LIVE_MOUNT_KEYS, 'mount', 'mount', 'mount', '/a', 'nbd://h/', 'persist', 'lazy', 'force', 'json', 'debug', '1', '30s', 'yes', 'list', 'show', 'set', 'x']
  let mutating = 0
  for (let i = 0; i < 5000; i++) {
    const length = 1 + Math.floor(Math.random() * 5)
    const text = Array.from({ length }, () => words[Math.floor(Math.random() * words.length)]).join(' ')
    const r = await c.request(text)
    if (r.ok) continue
    if (/permission denied/.test(r.text)) mutating++
  }
  c.close()
  assert.ok(mutating > 30, `fuzzing reached mutating commands (${mutating})`)
  assert.deepEqual(user.ran.filter((cmd) => !isReadOnly(cmd)), [], 'no mutating command ran for a non-root client')

  const root = await start({ uid: 0 })
  assert.equal((await controlRequest(root.socket, 'set max-in-flight 1')).text, 'ok')
  assert.equal(root.ran.length, 1)
})
