/**
 * Multipath (issue 17) in the library, against two nbdkit `file` servers over one image (one
 * page cache, so consistent): failover under a write + verify load, the checker and failback,
 * round-robin, the identity check, a path taken out and put back, every path down.
 */
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { NbdClient, type NbdClientOptions } from '../../src/index.ts'
import { rejectsWithCode, within } from '../helpers/assert.ts'
import { writeVerifyLoad } from '../helpers/load.ts'
import { stopServer, testScene, type RunningServer } from '../helpers/servers.ts'

const { dir, nbdkit } = testScene()
const MiB = 1 << 20
const fast: NbdClientOptions = { reconnectDelay: 10_000, backoff: { initialMs: 50, maxMs: 250 }, pollingInterval: 200 }

async function twoPaths (name: string, size = 16 * MiB, second: string[] = [], firstOptions: string[] = []): Promise<[RunningServer, RunningServer, string]> {
  const image = path.join(dir, `${name}.img`)
  writeFileSync(image, Buffer.alloc(size))
  const a = await nbdkit(`${name}-a`, [...firstOptions, 'file', image])
  const b = await nbdkit(`${name}-b`, second.length > 0 ? second : ['file', image])
  return [a, b, image]
}

async function until (what: string, condition: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!condition()) {
    if (Date.now() > deadline) assert.fail(`${what} did not happen within ${ms} ms`)
    await sleep(20)
  }
}

describe('multipath', () => {
  test('failover: kill -9 of the active path under load loses nothing and fails nothing; the checker sees it back; failback is immediate', async () => {
    const [a, b] = await twoPaths('failover')
    const client = await NbdClient.connect({ ...fast, uri: a.uri(), paths: [b.uri()], maxInFlight: 32 })
    assert.deepEqual(client.paths().map((p) => [p.path, p.state, p.active]), [[1, 'ready', true], [2, 'ready', false]])
    const model = Buffer.alloc(16 * MiB)
    let stop = false
    let longest = 0
    let last = Date.now()
    const ticker = setInterval(() => { last = Date.now() }, 5)
    const load = writeVerifyLoad(client, model, () => stop, { workers: 16, maxWrite: 16_384 })
    load.catch(() => {})
    const watch = setInterval(() => { longest = Math.max(longest, Date.now() - last) }, 5)
    await sleep(500)
    const before = client.stats().requests.write
    await a.stop('SIGKILL')
    await until('writes going on over path 2', () => client.stats().requests.write > before + 200)
    const during = client.paths()
    assert.equal(during[0]!.state, 'failed')
    assert.equal(during[1]!.active, true)
    assert.ok(during[0]!.lastFailure !== undefined, 'the failure is recorded')
    await a.restart()
    await until('the checker finds path 1 ready, and failback makes it active', () => client.paths()[0]!.state === 'ready' && client.paths()[0]!.active)
    await sleep(300)
    stop = true
    const rounds = await within(load, 20_000, 'the load')
    clearInterval(ticker)
    clearInterval(watch)
    assert.ok(rounds > 300, `the load ran (${rounds} rounds)`)
    assert.equal(client.stats().failedByDelay, 0)
    assert.ok(client.connectionInfo().every((c) => c.path === 1), 'every connection is back on path 1')
    await client.flush()
    const readBack = await client.read(16 * MiB, 0)
    assert.ok(readBack.equals(model), 'every acknowledged write is there')
    await client.close()
    // A hang detector only; the stall itself is measured in bench/multipath.ts.
    assert.ok(longest < 5000, `the event loop kept running (${longest} ms)`)
  })

  test('the checker looks at the active path too: a server that stops answering (SIGSTOP) is failed over within the check bound, not after the 60 s liveness timeout', async () => {
    // One worker thread: nbdkit 1.32 can abort when two threads reply on a connection the
    // client destroyed while the server was stopped (raw_send_socket: `sock >= 0`).
    const [a, b] = await twoPaths('hung', 16 * MiB, [], ['--threads', '1'])
    // requestTimeout stays at its 60 s default: only the checker can notice within the test.
    const client = await NbdClient.connect({ ...fast, uri: a.uri(), paths: [b.uri()], connections: 2 })
    await client.write(Buffer.alloc(4096, 1), 0)
    await stopServer(a.pid)
    try {
      await until('the checker fails path 1', () => client.paths()[0]!.state === 'failed', 15_000)
      assert.match(client.paths()[0]!.lastFailure!.reason, /no answer within 5000 ms/)
      assert.equal(client.paths()[1]!.active, true)
      // New I/O goes over path 2, not into the hung server's queue.
      await within(client.write(Buffer.alloc(4096, 2), 8192), 5000, 'a write after the failover')
      assert.equal((await within(client.read(4096, 8192), 5000, 'a read after the failover'))[0], 2)
      // The second connection may still be on its way over (its own hung link drains first).
      await until('every connection moved to path 2', () => client.connectionInfo().every((c) => c.path === 2), 10_000)
    } finally {
      process.kill(a.pid, 'SIGCONT')
    }
    await until('failback to path 1 once it answers again', () => client.paths()[0]!.state === 'ready' && client.paths()[0]!.active)
    assert.equal((await client.read(4096, 0))[0], 1)
    await client.close()
  })

  test('failback manual: the client stays on path 2 until switchPath(1)', async () => {
    const [a, b] = await twoPaths('manual')
    const client = await NbdClient.connect({ ...fast, uri: a.uri(), paths: [b.uri()], failback: 'manual' })
    await client.write(Buffer.alloc(4096, 1), 0)
    await a.stop('SIGKILL')
    await client.write(Buffer.alloc(4096, 2), 4096)
    assert.equal(client.paths()[1]!.active, true)
    await a.restart()
    await until('path 1 ready again', () => client.paths()[0]!.state === 'ready')
    await sleep(500)
    assert.equal(client.paths()[1]!.active, true, 'no failback without the administrator')
    client.switchPath(1)
    await until('connections on path 1', () => client.connectionInfo().every((c) => c.path === 1))
    assert.deepEqual(await client.read(8192, 0), Buffer.concat([Buffer.alloc(4096, 1), Buffer.alloc(4096, 2)]))
    await client.close()
  })

  test('round-robin: connections on both paths; one path down, the other carries everything; FLUSH goes to every path', async () => {
    const [a, b] = await twoPaths('rr')
    const client = await NbdClient.connect({ ...fast, uri: a.uri(), paths: [b.uri()], pathSelector: 'round-robin', connections: 4 })
    await until('connections on both paths', () => new Set(client.connectionInfo().map((c) => c.path)).size === 2)
    const model = Buffer.alloc(16 * MiB)
    let stop = false
    const load = writeVerifyLoad(client, model, () => stop, { workers: 16, maxWrite: 16_384, flushEvery: 20 })
    load.catch(() => {})
    await sleep(400)
    await b.stop('SIGKILL')
    await sleep(600)
    assert.ok(client.connectionInfo().every((c) => c.path === 1 && c.state === 'CONNECTED'), 'all on path 1')
    await b.restart()
    await until('back on both paths', () => new Set(client.connectionInfo().map((c) => c.path)).size === 2)
    stop = true
    await within(load, 20_000)
    await client.flush()
    assert.ok((await client.read(16 * MiB, 0)).equals(model))
    await client.close()
  })

  test('a path to a different export is refused with the reason; the other paths carry on', async () => {
    const image = path.join(dir, 'other.img')
    writeFileSync(image, Buffer.alloc(16 * MiB))
    const a = await nbdkit('same', ['file', image])
    const b = await nbdkit('different', ['memory', '8M'])
    const client = await NbdClient.connect({ ...fast, uri: a.uri(), paths: [b.uri()] })
    const [, second] = client.paths()
    assert.equal(second!.state, 'failed')
    assert.match(second!.checker, /refused: path 2 presents a different export: size changed from 16777216 to 8388608/)
    await a.stop('SIGKILL')
    // The refused path is never used: I/O waits for path 1.
    const write = client.write(Buffer.alloc(512), 0, { signal: AbortSignal.timeout(1500) })
    await rejectsWithCode(write, 'ABORT_ERR', 5000)
    await a.restart()
    await within(client.write(Buffer.alloc(512, 7), 0), 5000)
    await client.close()
  })

  test('identity: a named description or a digest of a block range must match on every path', async () => {
    const image = path.join(dir, 'ident.img')
    const label = Buffer.alloc(4096, 0x33)
    writeFileSync(image, Buffer.concat([label, Buffer.alloc(4 * MiB - 4096)]))
    const other = path.join(dir, 'ident-other.img')
    writeFileSync(other, Buffer.alloc(4 * MiB))
    const a = await nbdkit('ident-a', ['--filter=exportname', 'file', image, 'exportdesc=fixed:disk-A'])
    const b = await nbdkit('ident-b', ['--filter=exportname', 'file', other, 'exportdesc=fixed:disk-B'])
    const byDescription = await NbdClient.connect({ ...fast, uri: a.uri(), paths: [b.uri()], pathIdentity: 'description' })
    assert.match(byDescription.paths()[1]!.checker, /description is "disk-B", not "disk-A"/)
    await byDescription.close()
    const byDigest = await NbdClient.connect({ ...fast, uri: a.uri(), paths: [b.uri()], pathIdentity: { offset: 0, length: 4096 } })
    assert.match(byDigest.paths()[1]!.checker, /identity bytes at 0\+4096 differ/)
    await byDigest.close()
    const same = await NbdClient.connect({ ...fast, uri: a.uri(), paths: [a.uri()], pathIdentity: { offset: 0, length: 4096 } })
    assert.equal(same.paths()[1]!.state, 'ready')
    await same.close()
  })

  test('fail path N moves I/O away; reinstate puts it back; every path down longer than no-path-retry fails I/O, which works again when one returns', async () => {
    const [a, b] = await twoPaths('admin')
    const { reconnectDelay: _delay, ...rest } = fast
    const client = await NbdClient.connect({ ...rest, uri: a.uri(), paths: [b.uri()], noPathRetry: 1000 })
    client.failPath(1)
    assert.equal(client.paths()[0]!.state, 'disabled')
    await until('connections on path 2', () => client.connectionInfo().every((c) => c.path === 2))
    await client.write(Buffer.alloc(512, 1), 0)
    client.reinstatePath(1)
    await until('path 1 back (failback)', () => client.paths()[0]!.state === 'ready' && client.connectionInfo().every((c) => c.path === 1))
    await Promise.all([a.stop('SIGKILL'), b.stop('SIGKILL')])
    await rejectsWithCode(client.read(512, 0), 'NBD_ERR_RECONNECT_DELAY', 5000)
    await b.restart()
    await until('I/O works again', () => client.state === 'CONNECTED', 10_000)
    assert.deepEqual(await within(client.read(512, 0), 5000), Buffer.alloc(512, 1))
    await client.close()
  })
})
