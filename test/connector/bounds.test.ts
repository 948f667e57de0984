/**
 * Every wait has a bound, counted from the first failure across reconnects; nothing leaks; the
 * engine stays consistent whatever a listener does (issue 13, items 4, 6, 7 and 8).
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { readFileSync, truncateSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { NbdClient } from '../../src/index.ts'
import { NBD_STATE_HOLE } from '../../src/protocol/constants.ts'
import { handled, rejectsWithCode, within } from '../helpers/assert.ts'
import { nbdts } from '../helpers/cli.ts'
import { FakeServer } from '../helpers/fake-server.ts'
import { testScene } from '../helpers/servers.ts'

const { dir, nbdkit, defer } = testScene()
const fastBackoff = { initialMs: 50, maxMs: 250 }

describe('retries end', () => {
  test('a write slower than requestTimeout on a live server completes once, without reconnects', async () => {
    const server = await nbdkit('slow', ['--filter=delay', 'memory', '1M', 'delay-write=2'])
    const client = await NbdClient.connect(server.uri(), { requestTimeout: 1000, reconnectDelay: 5000, backoff: fastBackoff })
    const started = Date.now()
    await within(client.write(Buffer.alloc(4096, 1), 0), 6000, 'the slow write')
    assert.ok(Date.now() - started < 4000, 'it finished when the server did')
    assert.equal(client.stats().reconnects, 0)
    assert.equal(client.stats().retriedRequests, 0)
    await client.close()
  })

  test('a server that drops the connection on every request: the request fails at its bound, attempts are counted, not a storm', async () => {
    let connections = 0
    const server = await FakeServer.start(async (peer) => {
      connections++
      await peer.negotiate()
      await peer.readRequest()
      peer.destroy()
    })
    defer(() => server.close())
    const client = await NbdClient.connect(server.uri(), { reconnectDelay: 2000, backoff: fastBackoff })
    const started = Date.now()
    await rejectsWithCode(client.read(512, 0), 'NBD_ERR_RECONNECT_DELAY', 6000)
    const took = Date.now() - started
    assert.ok(took >= 1900 && took < 4000, `failed at its bound from the first failure (${took} ms)`)
    // Dense attempts while the request waits (50 ms over a Unix socket), never a storm.
    assert.ok(connections < 120, `${connections} connections in ${took} ms`)
    client.destroy()
  })

  test('a bound counts from the first failure: a request retried across a flapping server still fails at first failure + delay', async () => {
    // Each connection answers the handshake, then dies on the first request; the server is
    // up again at once, so every reconnect "succeeds" — and must not restart the clock.
    const server = await FakeServer.start(async (peer) => { await peer.negotiate(); await peer.readRequest(); peer.destroy() })
    defer(() => server.close())
    const client = await NbdClient.connect(server.uri(), { reconnectDelay: 1500, backoff: fastBackoff })
    const started = Date.now()
    await rejectsWithCode(client.write(Buffer.alloc(512), 0), 'NBD_ERR_RECONNECT_DELAY', 5000)
    assert.ok(Date.now() - started < 3000)
    assert.ok(client.stats().retriedRequests > 0, 'it was retried')
    client.destroy()
  })
})

describe('nothing leaks', () => {
  test('disconnect(); reconnect() with a request in flight: one new connection, and every connection ends', async () => {
    const log = path.join(dir, 'leak.log')
    const server = await nbdkit('leak', ['--filter=log', '--filter=delay', 'memory', '1M', 'delay-read=1', `logfile=${log}`])
    const client = await NbdClient.connect(server.uri(), { reconnectDelay: 10_000, backoff: fastBackoff })
    const read = handled(client.read(4096, 0))
    await sleep(100)
    client.disconnect()
    client.reconnect()
    assert.deepEqual(await within(read, 5000), Buffer.alloc(4096))
    assert.deepEqual(await within(client.read(512, 4096), 5000), Buffer.alloc(512))
    await client.close()
    let text = ''
    for (let i = 0; i < 100; i++) {
      text = readFileSync(log, 'utf8')
      if ((text.match(/ Disconnect /g) ?? []).length >= 2) break
      await sleep(20)
    }
    assert.equal((text.match(/ Connect /g) ?? []).length, 2, 'the first connection and one new one')
    assert.equal((text.match(/ Disconnect /g) ?? []).length, 2, 'both ended')
  })
})

describe('listeners', () => {
  test('a state listener that throws: an uncaught exception outside the engine; waiting requests complete', async () => {
    const server = await nbdkit('listener', ['memory', '1M'])
    const script = path.join(dir, 'listener.mts')
    writeFileSync(script, `
      import { NbdClient } from ${JSON.stringify(path.resolve('src/index.ts'))}
      const thrown = []
      process.on('uncaughtException', (err) => {
        if (!String(err.message).startsWith('listener bug')) { console.error(err); process.exit(2) }
        thrown.push(err.message)
      })
      const client = await NbdClient.connect(process.argv[2], { reconnectDelay: 20000, backoff: { initialMs: 50, maxMs: 250 } })
      client.on('state', (c) => { throw new Error('listener bug on ' + c.to) })
      await client.write(Buffer.alloc(512, 9), 0)
      process.send('kill')
      await new Promise((resolve) => process.once('message', resolve))
      const reads = Array.from({ length: 8 }, (_, i) => client.read(512, i * 512))
      process.send('restart')
      const got = await Promise.all(reads)
      await client.close()
      process.send(JSON.stringify({ ok: got[0][0] === 9, thrown }))
    `)
    const child = spawn(process.execPath, ['--import', 'tsx', script, server.uri()], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    const result = await within(new Promise<string>((resolve, reject) => {
      child.on('message', (m: string) => {
        if (m === 'kill') void server.stop('SIGKILL').then(() => child.send('killed'))
        else if (m === 'restart') void sleep(200).then(() => server.restart())
        else resolve(m)
      })
      child.once('exit', (code) => { reject(new Error(`the script exited (${code}) before answering`)) })
    }), 20_000)
    const { ok, thrown } = JSON.parse(result) as { ok: boolean, thrown: string[] }
    assert.ok(ok, 'the requests that waited through the outage completed')
    // QUIT too: close() resolves only after its state events were emitted.
    assert.deepEqual(thrown, ['listener bug on CONNECTING_WAIT', 'listener bug on CONNECTED', 'listener bug on QUIT'])
  })
})

describe('an export tail that is not a whole block', () => {
  test('BLOCK_STATUS, CACHE and nbdts info --map cover 1 MiB + 100 bytes with a 512-byte minimum block', async () => {
    const image = path.join(dir, 'tail.img')
    writeFileSync(image, Buffer.alloc(0))
    truncateSync(image, (1 << 20) + 100)
    writeFileSync(image, Buffer.alloc(4096, 1), { flag: 'r+' })
    const server = await nbdkit('tail', ['--filter=blocksize-policy', 'file', image, 'blocksize-minimum=512', 'blocksize-error-policy=error'])
    const client = await NbdClient.connect(server.uri())
    assert.equal(client.minBlockSize, 512)
    const extents = []
    for await (const e of client.map()) extents.push(e)
    assert.equal(extents.at(-1)!.offset + extents.at(-1)!.length, (1 << 20) + 100, 'the map covers the export')
    const tail = extents.at(-1)!
    assert.equal(tail.flags & NBD_STATE_HOLE, 0, 'the unreachable tail is reported as data')
    const inTail = await client.blockStatus(50, (1 << 20) + 10)
    assert.deepEqual(inTail.get('base:allocation'), [{ offset: (1 << 20) + 10, length: 50, flags: 0 }])
    if (client.canCache) await within(client.cache((1 << 20) + 100, 0), 5000)
    await client.close()
    const r = await nbdts(['info', '--map', server.uri()])
    assert.equal(r.code, 0, r.stderr)
    const last = r.stdout.trim().split('\n').at(-1)!.trim().split(/\s+/)
    assert.equal(Number(last[0]) + Number(last[1]), (1 << 20) + 100, r.stdout)
  })
})
