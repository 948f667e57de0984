/**
 * The request engine's promises to its callers: the in-flight bound, aborts that never touch
 * the caller's buffer again, FLUSH as a barrier, and a close that leaves nothing behind.
 */
import assert from 'node:assert/strict'
import { after, test } from 'node:test'
import { NbdClient } from '../../src/index.ts'
import { NBD_CMD } from '../../src/protocol/constants.ts'
import { FakeServer, type FakePeer, type WireRequest } from '../helpers/fake-server.ts'
import { liveHandles, rejectsWithCode, within, handled } from '../helpers/assert.ts'
import { startNbdkit, tempDir } from '../helpers/servers.ts'
import { FakePeer as Peer } from '../helpers/fake-server.ts'
import { duplexPair } from '../helpers/duplex-pair.ts'
import type net from 'node:net'

const servers: FakeServer[] = []
after(async () => { await Promise.all(servers.map((s) => s.close())) })

async function serve (script: (peer: FakePeer) => Promise<void>): Promise<FakeServer> {
  const server = await FakeServer.start(script)
  servers.push(server)
  return server
}

/** Reads the next request, or undefined if none arrives within `ms`. */
async function nextRequest (peer: FakePeer, ms: number): Promise<WireRequest | undefined> {
  return await peer.hasData(ms) ? await peer.readRequest() : undefined
}

test('never more than maxInFlight requests on the wire, and the limit can change', async () => {
  let maxSeen = 0
  const server = await serve(async (peer) => {
    await peer.negotiate()
    const pending: WireRequest[] = []
    for (;;) {
      const r = await nextRequest(peer, 50)
      if (r !== undefined) {
        if (r.type === NBD_CMD.DISC) return
        pending.push(r)
        maxSeen = Math.max(maxSeen, pending.length)
        continue
      }
      // Nothing more is coming: the client is at its limit. Answer everything.
      for (const p of pending.splice(0)) peer.offsetData(p, p.offset, Buffer.alloc(Number(p.length)))
    }
  })
  const client = await NbdClient.connect(server.uri(), { maxInFlight: 5 })
  await within(Promise.all(Array.from({ length: 40 }, (_, i) => client.read(512, i * 512))), 10_000)
  assert.equal(maxSeen, 5)
  client.maxInFlight = 12
  await within(Promise.all(Array.from({ length: 40 }, (_, i) => client.read(512, i * 512))), 10_000)
  assert.equal(maxSeen, 12)
  await client.close()
})

test('abort: before sending nothing goes out; in flight the reply is consumed and the buffer left alone', async () => {
  const seen: WireRequest[] = []
  let release: (() => void) | undefined
  const server = await serve(async (peer) => {
    await peer.negotiate()
    const first = await peer.readRequest()
    seen.push(first)
    // Hold the first reply until the test has aborted it.
    await new Promise<void>((resolve) => { release = resolve })
    peer.offsetData(first, first.offset, Buffer.alloc(512, 0xee))
    for (;;) {
      const r = await peer.readRequest()
      seen.push(r)
      if (r.type === NBD_CMD.DISC) return
      peer.offsetData(r, r.offset, Buffer.alloc(Number(r.length), 0x11))
    }
  })
  const client = await NbdClient.connect(server.uri(), { maxInFlight: 1 })
  const buffer = Buffer.alloc(512, 0x55)
  const inFlight = new AbortController()
  const readIntoBuffer = handled(client.readInto(buffer, 0, { signal: inFlight.signal }))
  const queued = new AbortController()
  const queuedRead = handled(client.read(512, 4096, { signal: queued.signal }))
  while (seen.length === 0) await new Promise((resolve) => setTimeout(resolve, 5))
  queued.abort()
  inFlight.abort(new Error('user gave up'))
  await rejectsWithCode(readIntoBuffer, 'ABORT_ERR', 1000)
  await rejectsWithCode(queuedRead, 'ABORT_ERR', 1000)
  release!()
  // The aborted request's reply is still read (the stream stays in step), but not into our buffer.
  assert.deepEqual(await within(client.read(16, 8192), 3000), Buffer.alloc(16, 0x11))
  assert.deepEqual(buffer, Buffer.alloc(512, 0x55))
  assert.deepEqual(seen.map((r) => Number(r.offset)), [0, 8192], 'the request aborted while queued never reached the wire')
  await client.close()
})

test('FLUSH is a barrier: sent after earlier writes are acked, later writes after its reply', async () => {
  const log: string[] = []
  const server = await serve(async (peer) => {
    await peer.negotiate()
    const w1 = await peer.readRequest()
    log.push('W1')
    // While W1 is unanswered the client must not send the FLUSH.
    if (await nextRequest(peer, 200) !== undefined) log.push('too early')
    peer.simpleReply(w1.cookie)
    const flush = await peer.readRequest()
    log.push(flush.type === NBD_CMD.FLUSH ? 'F' : `unexpected ${flush.type}`)
    if (await nextRequest(peer, 200) !== undefined) log.push('write crossed the flush')
    peer.simpleReply(flush.cookie)
    const w2 = await peer.readRequest()
    log.push(w2.type === NBD_CMD.WRITE ? 'W2' : `unexpected ${w2.type}`)
    peer.simpleReply(w2.cookie)
    await peer.readRequest()
  })
  const client = await NbdClient.connect(server.uri())
  await within(Promise.all([
    client.write(Buffer.alloc(512, 1), 0),
    client.flush(),
    client.write(Buffer.alloc(512, 2), 512)
  ]), 5000)
  assert.deepEqual(log, ['W1', 'F', 'W2'])
  await client.close()
})

test('close drains, sends NBD_CMD_DISC and leaves no socket or timer behind', async () => {
  const dir = tempDir()
  const server = await startNbdkit(dir, ['--filter=delay', 'memory', '1M', 'delay-read=200ms'], 'drain')
  const before = liveHandles()
  const client = await NbdClient.connect(server.uri())
  const reads = [client.read(4096, 0), client.read(4096, 4096)]
  await within(client.close(), 5000)
  assert.equal((await Promise.all(reads)).length, 2, 'in-flight requests finished before the disconnect')
  await rejectsWithCode(client.read(1, 0), 'NBD_ERR_CLOSED', 1000)
  await new Promise((resolve) => setTimeout(resolve, 50))
  assert.deepEqual(liveHandles(), before)
  await server.stop()
})

test('destroy fails everything now', async () => {
  const server = await serve(async (peer) => { await peer.negotiate(); await peer.closed() })
  const client = await NbdClient.connect(server.uri())
  const reads = Array.from({ length: 20 }, (_, i) => handled(client.read(512, i * 512)))
  await new Promise((resolve) => setTimeout(resolve, 20))
  client.destroy()
  for (const r of reads) await rejectsWithCode(r, 'NBD_ERR_CLOSED', 1000)
  assert.equal(client.state, 'QUIT')
})

test('a connect can be aborted, and a server that is not there fails at once', async () => {
  const server = await serve(async (peer) => { await peer.closed() })
  const controller = new AbortController()
  const connecting = NbdClient.connect(server.uri(), { signal: controller.signal })
  setTimeout(() => { controller.abort() }, 50)
  await rejectsWithCode(connecting, 'ABORT_ERR', 2000)
  await rejectsWithCode(NbdClient.connect('nbd+unix:///?socket=/nonexistent.sock'), 'NBD_ERR_CONNECTION', 2000, /ENOENT/)
})

test('a write that completes at once, with its drain event before anyone listens, does not hang', async () => {
  // Regression: seen through FUSE, where a fast server read each 1 MiB payload in one go.
  const [clientSide, serverSide] = duplexPair(1024)
  const peer = new Peer(serverSide as unknown as net.Socket)
  const served = (async () => {
    await peer.negotiate({ size: 64n << 20n })
    for (;;) {
      const r = await peer.readRequest()
      if (r.type === NBD_CMD.DISC) return
      peer.simpleReply(r.cookie)
    }
  })()
  const client = await NbdClient.connect({ open: async () => clientSide, requestTimeout: 5000 })
  const payload = Buffer.alloc(64 * 1024, 1)
  // Called from a macrotask (as FUSE does from a worker message): there Node runs nextTicks
  // (the uncork, the completed write, its 'drain') before any promise continuation.
  const fromMacrotask = (i: number): Promise<void> => new Promise((resolve, reject) => {
    setImmediate(() => { client.write(payload, i * payload.length).then(resolve, reject) })
  })
  await within((async () => { for (let i = 0; i < 50; i++) await fromMacrotask(i) })(), 3000, '50 sequential writes')
  await client.close()
  await within(served, 3000, 'the fake server')
})
