/**
 * Nothing acknowledged is lost or overtaken (issue 13, items 1-3 and 9), against real nbdkit:
 * an aborted write still on the wire holds back the FLUSH and later overlapping writes; a slow
 * write on a live server is waited for, not retried where the original could land after the
 * copy; acknowledged writes a crashed server lost are written again before the FLUSH that
 * vouches for them; aborted requests keep their slots only while their server may still answer.
 */
import assert from 'node:assert/strict'
import { chmodSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { NbdClient } from '../../src/index.ts'
import { handled, rejectsWithCode, within } from '../helpers/assert.ts'
import { run, stopServer, testScene, type RunningServer } from '../helpers/servers.ts'

const { dir, nbdkit } = testScene()
const fastBackoff = { initialMs: 50, maxMs: 250 }

/** The log filter's data commands in order, as "Write 0" (sent) and "...Write 0" (finished). */
function logged (file: string): string[] {
  const offsets = new Map<string, number>()
  return readFileSync(file, 'utf8').split('\n').flatMap((line) => {
    const m = / connection=(\d+) (\.\.\.)?(Read|Write|Zero|Trim|Flush) id=(\d+)(?: offset=0x([0-9a-f]+))?/.exec(line)
    if (m === null) return []
    const key = `${m[1]}/${m[4]}`
    if (m[5] !== undefined) offsets.set(key, Number.parseInt(m[5], 16))
    return [`${m[2] ?? ''}${m[3]} ${offsets.get(key) ?? 0}`]
  })
}

async function contents (server: RunningServer, offset: number, length: number): Promise<Buffer> {
  const { stdout } = await run('nbdcopy', [server.uri(), '-'])
  return stdout.subarray(offset, offset + length)
}

describe('an aborted write keeps its order until its life on the wire ends', () => {
  test('FLUSH barrier: a later write and FLUSH wait for an aborted WRITE_ZEROES the server still runs', async () => {
    const log = path.join(dir, 'barrier.log')
    const server = await nbdkit('barrier', ['--filter=log', '--filter=delay', 'memory', '1M', 'delay-zero=2', `logfile=${log}`])
    const client = await NbdClient.connect(server.uri())
    const ac = new AbortController()
    const zero = handled(client.writeZeroes(4096, 0, { signal: ac.signal }))
    await sleep(200)
    ac.abort()
    await rejectsWithCode(zero, 'ABORT_ERR', 500)
    await within(client.write(Buffer.alloc(4096, 0x42), 0), 5000)
    await within(client.flush(), 5000)
    await client.close()
    assert.deepEqual(await contents(server, 0, 4096), Buffer.alloc(4096, 0x42), 'the acknowledged write is what the export holds')
    const order = logged(log)
    assert.ok(order.indexOf('...Zero 0') < order.indexOf('Write 0'), `the write went out after the zero finished: ${order.join(', ')}`)
  })

  test('range lock: an aligned write waits for an aborted read-modify-write the server still runs', async () => {
    const log = path.join(dir, 'rmw.log')
    const server = await nbdkit('rmw', ['--filter=log', '--filter=blocksize-policy', '--filter=delay', 'memory', '1M',
      'blocksize-minimum=512', 'blocksize-error-policy=error', 'delay-write=2', `logfile=${log}`])
    const client = await NbdClient.connect(server.uri())
    assert.equal(client.minBlockSize, 512)
    const ac = new AbortController()
    const zero = handled(client.writeZeroes(200, 100, { signal: ac.signal }))
    for (let i = 0; i < 100 && !logged(log).includes('Write 0'); i++) await sleep(10)
    ac.abort()
    await rejectsWithCode(zero, 'ABORT_ERR', 500)
    await within(client.write(Buffer.alloc(512, 0x42), 0), 8000)
    await client.close()
    assert.deepEqual(await contents(server, 0, 512), Buffer.alloc(512, 0x42))
    const order = logged(log).filter((l) => l.includes('Write'))
    assert.deepEqual(order, ['Write 0', '...Write 0', 'Write 0', '...Write 0'], 'one write after the other, never overlapping')
  })
})

/** An sh plugin over a file whose first pwrite takes 2.5 s; every pwrite is logged. */
function slowFirstWrite (name: string, threadModel: string): { script: string, disk: string, writes: string } {
  const disk = path.join(dir, `${name}.img`)
  const writes = path.join(dir, `${name}.writes`)
  const script = path.join(dir, `${name}.sh`)
  writeFileSync(disk, Buffer.alloc(1 << 20))
  writeFileSync(writes, '')
  writeFileSync(script, `#!/bin/bash -
case "$1" in
  get_size) echo 1M ;;
  can_write|can_flush) exit 0 ;;
  can_multi_conn) exit 3 ;;
  thread_model) echo ${threadModel} ;;
  pread) dd if=${disk} skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none ;;
  pwrite)
    if [ ! -e ${disk}.slept ]; then touch ${disk}.slept; sleep 2.5; fi
    dd of=${disk} seek=$4 conv=notrunc oflag=seek_bytes status=none
    echo "pwrite $4 $(od -An -tx1 -N1 ${disk} | tr -d ' ')" >> ${writes} ;;
  flush) exit 0 ;;
  *) exit 2 ;;
esac
`)
  chmodSync(script, 0o755)
  return { script, disk, writes }
}

describe('a slow write on a live server is waited for, never retried where its original can land later', () => {
  for (const threadModel of ['parallel', 'serialize_requests']) {
    test(`requestTimeout 1000 ms, a first write that takes 2.5 s (${threadModel})`, async () => {
      const { script, disk, writes } = slowFirstWrite(`slow-${threadModel}`, threadModel)
      const server = await nbdkit(`slow-${threadModel}`, ['sh', script])
      const client = await NbdClient.connect(server.uri(), { requestTimeout: 1000, reconnectDelay: 10_000, backoff: fastBackoff })
      await within(client.write(Buffer.alloc(4096, 0x41), 0), 8000)
      await within(client.write(Buffer.alloc(4096, 0x42), 0), 8000)
      await sleep(3000)
      assert.deepEqual(readFileSync(disk).subarray(0, 4096), Buffer.alloc(4096, 0x42), 'the later write is what the disk holds')
      const lines = readFileSync(writes, 'utf8').trim().split('\n')
      assert.equal(lines.at(-1), 'pwrite 0 42', `the last write to land is the later one: ${lines.join(', ')}`)
      if (threadModel === 'parallel') {
        assert.equal(client.stats().reconnects, 0, 'a live server that answers the probe keeps its connection')
        assert.deepEqual(lines, ['pwrite 0 41', 'pwrite 0 42'], 'nothing was sent twice')
      }
      await client.close()
    })
  }
})

describe('acknowledged writes a crashed server lost are written again before any FLUSH vouches for them', () => {
  async function crashable (name: string): Promise<{ server: RunningServer, image: string }> {
    const image = path.join(dir, `${name}.img`)
    writeFileSync(image, Buffer.alloc(4 << 20))
    // Writes live in the cache filter until a FLUSH; kill -9 loses them (a crash).
    const server = await nbdkit(name, ['--filter=cache', 'file', image, 'cache=writeback'])
    return { server, image }
  }

  test('kill -9 after an acknowledged write: replayed on the new connection, read back, and durable after FLUSH', async () => {
    const { server, image } = await crashable('crash')
    const client = await NbdClient.connect(server.uri(), { reconnectDelay: 20_000, backoff: fastBackoff })
    assert.ok(client.canFlush)
    await client.write(Buffer.alloc(4096, 0x55), 8192)
    await client.write(Buffer.alloc(100, 0x66), 8192 + 50)
    await server.stop('SIGKILL')
    assert.deepEqual(readFileSync(image).subarray(8192, 8192 + 4096), Buffer.alloc(4096), 'the crash lost the writes')
    await server.restart()
    const expected = Buffer.alloc(4096, 0x55)
    expected.fill(0x66, 50, 150)
    assert.deepEqual(await within(client.read(4096, 8192), 10_000), expected, 'the first request after the reconnect sees the replayed data')
    await within(client.flush(), 5000)
    await server.stop('SIGKILL')
    assert.deepEqual(readFileSync(image).subarray(8192, 8192 + 4096), expected, 'after FLUSH the writes are on the disk')
    await server.restart()
    await client.close()
  })

  test('without the log (replayLog: 0), a FLUSH after such a reconnect fails instead of vouching', async () => {
    const { server } = await crashable('nolog')
    const client = await NbdClient.connect(server.uri(), { reconnectDelay: 20_000, backoff: fastBackoff, replayLog: 0 })
    await client.write(Buffer.alloc(4096, 0x55), 0)
    await server.stop('SIGKILL')
    await server.restart()
    await rejectsWithCode(client.flush(), 'NBD_ERR_DURABILITY', 10_000)
    // Once said, the next FLUSH covers only what was written since: it succeeds.
    await client.write(Buffer.alloc(4096, 0x77), 0)
    await within(client.flush(), 5000)
    await client.close()
  })

  test('a clean FLUSH empties the log: a crash after it replays nothing, and loses nothing', async () => {
    const { server, image } = await crashable('flushed')
    const client = await NbdClient.connect(server.uri(), { reconnectDelay: 20_000, backoff: fastBackoff })
    await client.write(Buffer.alloc(4096, 0x11), 0)
    await client.flush()
    await server.stop('SIGKILL')
    await server.restart()
    assert.deepEqual(await within(client.read(4096, 0), 10_000), Buffer.alloc(4096, 0x11))
    assert.deepEqual(readFileSync(image).subarray(0, 4096), Buffer.alloc(4096, 0x11))
    await client.close()
  })
})

describe('aborted requests and their slots', () => {
  test('requestTimeout 0: a stopped server keeps aborted requests in their slots; new ones wait, bounded by their own signal', async () => {
    const server = await nbdkit('stopped', ['memory', '1M'])
    const client = await NbdClient.connect(server.uri(), { maxInFlight: 2, requestTimeout: 0 })
    await stopServer(server.pid)
    try {
      const acs = [new AbortController(), new AbortController()]
      const reads = acs.map((ac, i) => handled(client.read(512, i * 512, { signal: ac.signal })))
      await sleep(50)
      for (const ac of acs) ac.abort()
      for (const r of reads) await rejectsWithCode(r, 'ABORT_ERR', 500)
      // Their server may still answer them: they hold their slots (and their order) until then.
      const third = handled(client.read(512, 4096, { signal: AbortSignal.timeout(300) }))
      await rejectsWithCode(third, 'ABORT_ERR', 2000)
    } finally {
      process.kill(server.pid, 'SIGCONT')
    }
    assert.deepEqual(await within(client.read(512, 0), 5000), Buffer.alloc(512), 'once the server answers, the slots are free')
    await client.close()
  })

  test('requestTimeout 1000: the same stopped server is declared dead; its slots are freed when the drain gives up', async () => {
    // One worker thread: nbdkit 1.32 can abort (raw_send_socket: `sock >= 0`) when two threads
    // reply on a connection the client has just destroyed, and the test is about our side.
    const server = await nbdkit('stopped2', ['--threads', '1', 'memory', '1M'])
    const client = await NbdClient.connect(server.uri(), { maxInFlight: 2, requestTimeout: 1000, reconnectDelay: 0, backoff: fastBackoff })
    await stopServer(server.pid)
    let later: Promise<Buffer>
    try {
      const reads = [0, 1].map((i) => handled(client.read(512, i * 512)))
      for (const r of reads) await rejectsWithCode(r, 'NBD_ERR_TIMEOUT', 3000)
      later = handled(client.read(512, 0, { signal: AbortSignal.timeout(8000) }))
      await sleep(2500)
    } finally {
      process.kill(server.pid, 'SIGCONT')
    }
    // The connector meanwhile finds the server (it answers again): new requests go there.
    const deadline = Date.now() + 8000
    while (client.state !== 'CONNECTED' && Date.now() < deadline) await sleep(20)
    assert.equal(client.state, 'CONNECTED')
    await later.catch(() => {})
    assert.deepEqual(await within(client.read(512, 512), 5000), Buffer.alloc(512))
    await client.close()
  })
})
