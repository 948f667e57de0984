/**
 * Reconnect against real servers that die and come back: kill -9 under load, outages longer
 * than the reconnect delay, fifty restarts in a row, a server that returns as something else,
 * a server that shuts down politely (ESHUTDOWN), and the open timeout.
 */
import assert from 'node:assert/strict'
import { randomInt } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import diagnostics from 'node:diagnostics_channel'
import path from 'node:path'
import { after, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { NbdClient, type NbdClientState } from '../../src/index.ts'
import { liveHandles, rejectsWithCode, within, handled } from '../helpers/assert.ts'
import { FakeServer } from '../helpers/fake-server.ts'
import { writeVerifyLoad } from '../helpers/load.ts'
import { NBD_CMD } from '../../src/protocol/constants.ts'
import { run, startNbdkit, tcpPort, tempDir, type RunningServer } from '../helpers/servers.ts'

const dir = tempDir()
const stops: Array<() => Promise<void>> = []
after(async () => { await Promise.all(stops.map((s) => s())) })
const MiB = 1 << 20
const fastBackoff = { initialMs: 50, maxMs: 250 }

async function fileServer (name: string, size: number, options: { tcp?: number, filters?: string[], params?: string[] } = {}): Promise<{ server: RunningServer, disk: string }> {
  const disk = path.join(dir, `${name}.img`)
  writeFileSync(disk, Buffer.alloc(size))
  const args = [...(options.filters ?? []), 'file', disk, ...(options.params ?? [])]
  const server = await startNbdkit(dir, args, name, options.tcp === undefined ? {} : { tcp: options.tcp })
  stops.push(() => server.stop('SIGKILL'))
  return { server, disk }
}

describe('reconnect', () => {
  for (const transport of ['unix', 'tcp'] as const) {
    test(`kill -9 under a write+verify load at 64 in flight (${transport}): nothing fails, nothing acknowledged is lost`, async () => {
      const { server } = await fileServer(`kill-${transport}`, 64 * MiB, transport === 'tcp' ? { tcp: tcpPort() } : {})
      const client = await NbdClient.connect(server.uri(), { maxInFlight: 64, reconnectDelay: 20_000, backoff: fastBackoff })
      const states: NbdClientState[] = []
      client.on('state', (c) => states.push(c.to))
      const model = Buffer.alloc(64 * MiB)
      let stop = false
      const load = writeVerifyLoad(client, model, () => stop)
      await sleep(700)
      await server.stop('SIGKILL')
      await sleep(1000 + randomInt(2000))
      await server.restart()
      while (client.state !== 'CONNECTED') await sleep(20)
      await sleep(700)
      stop = true
      const rounds = await within(load, 30_000, 'the load')
      assert.ok(rounds > 250, `load ran (${rounds} write + verify rounds)`)
      assert.deepEqual(states, ['CONNECTING_WAIT', 'CONNECTED'])
      const stats = client.stats()
      assert.equal(stats.reconnects, 1)
      assert.ok(stats.retriedRequests > 0, 'requests in flight at the kill were sent again')
      assert.equal(stats.failedByDelay, 0)
      await client.close()
      // An independent reader sees every acknowledged byte.
      const { stdout } = await run('nbdcopy', [server.uri(), '-'])
      assert.ok(stdout.equals(model), 'the export holds exactly the acknowledged writes')
    })
  }

  test('an outage longer than reconnectDelay: waiters fail in time, new requests fail at once, then it heals', async () => {
    const { server } = await fileServer('outage', 4 * MiB)
    const client = await NbdClient.connect(server.uri(), { reconnectDelay: 1000, backoff: fastBackoff })
    await client.write(Buffer.alloc(4096, 1), 0)
    await server.stop('SIGKILL')
    const killed = Date.now()
    // Requests issued during the outage wait, then fail with the typed delay error.
    const waiters = Array.from({ length: 8 }, (_, i) => handled(client.read(4096, i * 4096)))
    for (const w of waiters) await rejectsWithCode(w, 'NBD_ERR_RECONNECT_DELAY', 5000)
    const waited = Date.now() - killed
    assert.ok(waited < 1000 + 1000, `waiters failed within delay + 1 s (${waited} ms)`)
    assert.equal(client.state, 'CONNECTING_NOWAIT')
    const started = Date.now()
    await rejectsWithCode(client.read(512, 0), 'NBD_ERR_RECONNECT_DELAY', 1000)
    assert.ok(Date.now() - started < 200, 'new requests fail at once while NOWAIT')
    assert.ok(client.stats().failedByDelay >= 8)
    await server.restart()
    const connected = (): boolean => client.state === 'CONNECTED'
    for (let i = 0; !connected() && i < 200; i++) await sleep(20)
    assert.ok(connected(), 'the connector came back on its own')
    assert.deepEqual(await client.read(4096, 0), Buffer.alloc(4096, 1))
    await client.close()
  })

  test('cancelInFlight fails waiting requests now', async () => {
    const { server } = await fileServer('cancel', MiB)
    const client = await NbdClient.connect(server.uri(), { reconnectDelay: 60_000, backoff: fastBackoff })
    await server.stop('SIGKILL')
    const waiting = handled(client.read(512, 0))
    await sleep(200)
    const started = Date.now()
    client.cancelInFlight()
    await rejectsWithCode(waiting, 'NBD_ERR_RECONNECT_DELAY', 1000)
    assert.ok(Date.now() - started < 200)
    await client.close()
  })

  test('fifty restarts in a row under load: no failure, no leaked handle, listener or timer, bounded time', async () => {
    const warnings: Error[] = []
    const onWarning = (w: Error): void => { warnings.push(w) }
    process.on('warning', onWarning)
    const { server } = await fileServer('fifty', 16 * MiB)
    const before = liveHandles()
    const client = await NbdClient.connect(server.uri(), { maxInFlight: 32, reconnectDelay: 20_000, backoff: { initialMs: 20, maxMs: 100 } })
    const published: unknown[] = []
    const onPublish = (m: unknown): void => { published.push(m) }
    diagnostics.subscribe('nbdts:client:state', onPublish)
    const model = Buffer.alloc(16 * MiB)
    let stop = false
    const load = writeVerifyLoad(client, model, () => stop)
    const started = Date.now()
    for (let i = 0; i < 50; i++) {
      await sleep(50)
      await server.stop('SIGKILL')
      await server.restart()
      for (let j = 0; client.state !== 'CONNECTED' && j < 500; j++) await sleep(10)
    }
    stop = true
    await within(load, 30_000, 'the load')
    const elapsed = Date.now() - started
    assert.ok(elapsed < 60_000, `50 restarts took ${elapsed} ms`)
    assert.equal(client.stats().reconnects, 50)
    await client.close()
    diagnostics.unsubscribe('nbdts:client:state', onPublish)
    process.off('warning', onWarning)
    assert.ok(published.length >= 100, 'every state change was published on the diagnostics channel')
    const { stdout } = await run('nbdcopy', [server.uri(), '-'])
    assert.ok(stdout.equals(model))
    await sleep(50)
    assert.deepEqual(liveHandles(), before, 'no socket or timer left behind')
    assert.deepEqual(warnings.map((w) => w.name), [], 'no MaxListenersExceeded or other warnings')
  })

  test('the server comes back with another size: QUIT, and nothing is written to it', async () => {
    const log = path.join(dir, 'changed.log')
    const first = await startNbdkit(dir, ['memory', '8M'], 'changed')
    const client = await NbdClient.connect(first.uri(), { reconnectDelay: 20_000, backoff: fastBackoff })
    await client.write(Buffer.alloc(4096, 3), 0)
    await first.stop('SIGKILL')
    const pending = handled(client.write(Buffer.alloc(4096, 4), 4096))
    const second = await startNbdkit(dir, ['--filter=log', 'memory', '16M', `logfile=${log}`], 'changed')
    stops.push(() => second.stop())
    await rejectsWithCode(pending, 'NBD_ERR_SERVER_CHANGED', 10_000, /size changed from 8388608 to 16777216/)
    assert.equal(client.state, 'QUIT')
    await rejectsWithCode(client.read(1, 0), 'NBD_ERR_SERVER_CHANGED', 1000)
    await second.stop()
    const lines = readFileSync(log, 'utf8').split('\n')
    assert.deepEqual(lines.filter((l) => / (Read|Write|Zero|Trim|Flush|Extents|Cache) id=/.test(l)), [], 'no request reached the new server')
    client.destroy()
  })

  test('nbdkit stopped with SIGTERM answers ESHUTDOWN: a reconnect, not a data error', async () => {
    const { server } = await fileServer('sigterm', 4 * MiB, { filters: ['--filter=delay'], params: ['delay-read=1'] })
    const client = await NbdClient.connect(server.uri(), { reconnectDelay: 20_000, backoff: fastBackoff })
    await client.write(Buffer.alloc(8192, 7), 0)
    const reads = [client.read(4096, 0), client.read(4096, 4096)]
    await sleep(200)
    await server.stop('SIGTERM')
    await server.restart()
    const results = await within(Promise.all(reads), 15_000)
    for (const r of results) assert.deepEqual(r, Buffer.alloc(4096, 7))
    assert.equal(client.stats().serverErrors, 0, 'ESHUTDOWN was not reported as a data error')
    assert.equal(client.stats().reconnects, 1)
    await client.close()
  })

  test('close() while the server is away fails waiters at once and leaves nothing running', async () => {
    const before = liveHandles()
    const { server } = await fileServer('closeaway', MiB)
    const client = await NbdClient.connect(server.uri(), { reconnectDelay: 60_000, backoff: fastBackoff })
    await server.stop('SIGKILL')
    const waiting = handled(client.read(512, 0))
    await sleep(100)
    await within(client.close(), 1000)
    await rejectsWithCode(waiting, 'NBD_ERR_CLOSED', 1000)
    await sleep(50)
    // The killed server's pipes are gone too, so this is the count from before it started.
    assert.deepEqual(liveHandles(), before)
  })
})

test('across a reconnect, writes are re-sent before the FLUSH that covers them, and later writes after it', async () => {
  const order: string[] = []
  const server = await FakeServer.start(async (peer, index) => {
    await peer.negotiate()
    if (index === 0) {
      // First connection: take W1, then die before answering.
      const w1 = await peer.readRequest()
      order.push(`conn0:${w1.type === NBD_CMD.WRITE ? 'W' : '?'}@${w1.offset}`)
      peer.destroy()
      return
    }
    for (;;) {
      const r = await peer.readRequest()
      if (r.type === NBD_CMD.DISC) return
      order.push(`conn1:${r.type === NBD_CMD.FLUSH ? 'F' : 'W'}@${r.offset}`)
      // Answer slowly so anything sent too early would show up first.
      await sleep(50)
      peer.simpleReply(r.cookie)
    }
  })
  const client = await NbdClient.connect(server.uri(), { reconnectDelay: 10_000, backoff: fastBackoff })
  await within(Promise.all([
    client.write(Buffer.alloc(512, 1), 0),
    client.flush(),
    client.write(Buffer.alloc(512, 2), 4096)
  ]), 10_000)
  await client.close()
  await server.close()
  assert.deepEqual(order, ['conn0:W@0', 'conn1:W@0', 'conn1:F@0', 'conn1:W@4096'])
  assert.deepEqual(server.errors, [])
})

describe('open timeout', () => {
  test('no server at all: fails after the timeout, not before, not never', async () => {
    const missing = `nbd+unix:///?socket=${dir}/never.sock`
    const started = Date.now()
    const err = await rejectsWithCode(NbdClient.connect(missing, { openTimeout: 1500, backoff: { initialMs: 200, maxMs: 400 } }), 'NBD_ERR_TIMEOUT', 5000, /within 1500 ms: cannot connect/)
    const elapsed = Date.now() - started
    assert.ok(elapsed >= 1500 && elapsed < 2500, `failed after ${elapsed} ms`)
    assert.match(String((err.cause as Error).message), /ENOENT/, 'the last connect error is the cause')
    const once = Date.now()
    await rejectsWithCode(NbdClient.connect(missing), 'NBD_ERR_CONNECTION', 2000)
    assert.ok(Date.now() - once < 500, 'without an open timeout there is one attempt')
  })

  test('a server that starts late is found while the open timeout lasts', async () => {
    const name = 'late'
    const connecting = NbdClient.connect(`nbd+unix:///?socket=${dir}/${name}.sock`, { openTimeout: 10_000, backoff: fastBackoff })
    await sleep(800)
    const server = await startNbdkit(dir, ['memory', '1M'], name)
    stops.push(() => server.stop())
    const client = await within(connecting, 10_000)
    assert.equal(client.size, MiB)
    assert.ok(client.stats().connectFailures > 0)
    await client.close()
  })
})
