/**
 * What the public API says when things go wrong (issue 25, item 2): an error that says what
 * is true after disconnect(), a dead server named as such, and 'state' events that come before
 * the caller hears of the failure that caused them, and before close() resolves.
 */
import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { NbdClient, NbdError } from '../../src/index.ts'
import { startNbdkit, tempDir, type RunningServer } from '../helpers/servers.ts'

const dir = tempDir()
const servers: RunningServer[] = []
after(async () => { await Promise.all(servers.map((s) => s.stop('SIGKILL'))) })

async function server (name: string, args = ['memory', '1M']): Promise<RunningServer> {
  const s = await startNbdkit(dir, args, name)
  servers.push(s)
  return s
}

async function failure (work: Promise<unknown>): Promise<NbdError> {
  try {
    await work
  } catch (err) {
    assert.ok(err instanceof NbdError, `an NbdError, not ${String(err)}`)
    return err
  }
  assert.fail('it succeeded')
}

async function until (what: string, ok: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!ok()) {
    if (Date.now() > deadline) assert.fail(`${what}: not within ${ms} ms`)
    await sleep(10)
  }
}

describe('the API when things go wrong', () => {
  test('after disconnect(), a request fails saying the client is held until reconnect(), not "reconnecting in the background"', async () => {
    const s = await server('held')
    const client = await NbdClient.connect(s.uri(), { reconnectDelay: 0 })
    client.disconnect()
    await until('disconnected', () => client.state !== 'CONNECTED')
    const err = await failure(client.read(512, 0))
    assert.equal(err.code, 'NBD_ERR_CONNECTION')
    assert.doesNotMatch(err.message, /reconnecting in the background/)
    assert.match(err.message, /disconnect\(\).*reconnect\(\)/)
    client.reconnect()
    await until('reconnected', () => client.state === 'CONNECTED')
    assert.equal((await client.read(512, 0)).length, 512)
    await client.close()
  })

  test('after disconnect(), a request that waited out the reconnect delay says it was held, not that the server stayed away', async () => {
    const s = await server('held-delay')
    const client = await NbdClient.connect(s.uri(), { reconnectDelay: 300 })
    client.disconnect()
    await until('disconnected', () => client.state !== 'CONNECTED')
    const err = await failure(client.read(512, 0))
    assert.doesNotMatch(err.message, /did not come back|unreachable/)
    assert.match(err.message, /disconnect\(\).*reconnect\(\)/)
    await client.close()
  })

  test('a server that died under a write (EPIPE): "server closed the connection", with the stable code', async () => {
    const s = await server('dead')
    const client = await NbdClient.connect(s.uri(), { reconnectDelay: 0 })
    // The server is gone before the client has seen its EOF: the write meets EPIPE.
    process.kill(s.pid, 'SIGKILL')
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 200)
    const err = await failure(client.write(Buffer.alloc(1 << 19, 1), 0))
    assert.equal(err.code, 'NBD_ERR_CONNECTION')
    assert.equal(err.message, 'server closed the connection')
    await client.close()
  })

  test('a server that died with a request in flight: "server closed the connection", nothing about reply headers', async () => {
    const s = await server('dead-in-flight', ['--filter=delay', 'memory', '1M', 'delay-read=2'])
    const client = await NbdClient.connect(s.uri(), { reconnectDelay: 0 })
    const failed = failure(client.read(512, 0))
    await sleep(300)
    await s.stop('SIGKILL')
    const err = await failed
    assert.equal(err.code, 'NBD_ERR_CONNECTION')
    assert.equal(err.message, 'server closed the connection')
    await client.close()
  })

  test("'state' events come before the caller's catch for the failure that caused them, and before close() resolves", async () => {
    const s = await server('order', ['--filter=delay', 'memory', '1M', 'delay-read=2'])
    const client = await NbdClient.connect(s.uri(), { reconnectDelay: 0 })
    const seen: string[] = []
    client.on('state', (c) => seen.push(`state ${c.from}→${c.to}`))
    // The caller's own handlers, on the request's promise.
    const read = client.read(512, 0).then(() => { seen.push('read succeeded') }, () => { seen.push('catch') })
    await sleep(300)
    await s.stop('SIGKILL')
    await read
    assert.deepEqual(seen, ['state CONNECTED→CONNECTING_NOWAIT', 'catch'])
    await client.close()
    seen.push('closed')
    assert.deepEqual(seen, ['state CONNECTED→CONNECTING_NOWAIT', 'catch', 'state CONNECTING_NOWAIT→QUIT', 'closed'])
  })

  test("close() of a healthy client resolves after its 'state' event", async () => {
    const s = await server('close')
    const client = await NbdClient.connect(s.uri())
    const seen: string[] = []
    client.on('state', (c) => seen.push(c.to))
    await client.close()
    seen.push('closed')
    assert.deepEqual(seen, ['QUIT', 'closed'])
  })
})
