/**
 * Ordering across paths (the engine-trust rules under multipath): a write in flight on a path
 * that is left on purpose is finished there, not sent again; one on a hung path is in doubt
 * (its caller told, overlapping writes and FLUSH refused) until the hung server answers; the
 * default no-path-retry of 0 fails nothing while another path is usable; an administrator's
 * switch holds; a path that shows another disk is never used; close() leaves no probe behind.
 */
import assert from 'node:assert/strict'
import { readFileSync, rmSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { NbdClient } from '../../src/index.ts'
import { handled, liveHandles, rejectsWithCode, within } from '../helpers/assert.ts'
import { startQemuNbd, stopServer, testScene, type RunningServer } from '../helpers/servers.ts'

const { dir, nbdkit, defer } = testScene()
const backoff = { initialMs: 50, maxMs: 250 }

function image (name: string, size = 4 << 20, fill = 0): string {
  const file = path.join(dir, `${name}.img`)
  writeFileSync(file, Buffer.alloc(size, fill))
  return file
}

async function until (what: string, condition: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting: ${what}`)
    await sleep(20)
  }
}

/** A client on path 1 that switches to path 2 while a write of 0xAA at 0 is in flight there; once it is acknowledged. */
async function switchWithWriteInFlight (a: RunningServer, b: RunningServer): Promise<NbdClient> {
  const client = await NbdClient.connect({ uri: a.uri(), paths: [b.uri()], failback: 'manual', reconnectDelay: 30_000, pollingInterval: 60_000, backoff })
  defer(() => client.close())
  const inFlight = handled(client.write(Buffer.alloc(4096, 0xaa), 0))
  await sleep(200)
  client.switchPath(2)
  await within(inFlight, 10_000, 'the write in flight on path 1')
  return client
}

describe('multipath: ordering across paths', () => {
  test('close() with a probe hanging in its handshake leaves no socket or timer behind', async () => {
    // First in the file: the other tests' clients stay open until the end, probing.
    const disk = image('leak')
    const a = await nbdkit('leak-a', ['file', disk])
    const b = await nbdkit('leak-b', ['file', disk])
    const before = liveHandles()
    const client = await NbdClient.connect({ uri: a.uri(), paths: [b.uri()], pollingInterval: 200, backoff })
    await stopServer(b.pid)
    try {
      await sleep(700)
      await within(client.close(), 10_000, 'close()')
      // A destroyed socket's handle closes on the next turn of the loop.
      await sleep(50)
      assert.deepEqual(liveHandles(), before)
    } finally {
      process.kill(b.pid, 'SIGCONT')
    }
  })

  test('a planned switch finishes a write in flight on the old path (not sent again); a later write of the range lands after it', async () => {
    const disk = image('planned')
    // qemu-nbd behind a write throttle: a 64 KiB write takes about 2 s on path 1.
    const opts = (bps: number): string[] => ['--object', `throttle-group,id=tg0,x-bps-write=${bps}`, '--image-opts',
      `driver=throttle,throttle-group=tg0,file.driver=raw,file.file.driver=file,file.file.filename=${disk},file.file.locking=off`]
    const a = await startQemuNbd(dir, opts(32768), 'planned-a')
    defer(() => a.stop('SIGKILL'))
    const b = await startQemuNbd(dir, opts(1_000_000_000), 'planned-b')
    defer(() => b.stop('SIGKILL'))
    const client = await NbdClient.connect({ uri: a.uri(), paths: [b.uri()], failback: 'manual', reconnectDelay: 30_000, pollingInterval: 60_000, backoff })
    defer(() => client.close())
    const L = 64 << 10
    const first = handled(client.write(Buffer.alloc(L, 0xaa), 0))
    await sleep(200)
    client.switchPath(2)
    await within(first, 20_000, 'the write in flight on path 1')
    await client.write(Buffer.alloc(L, 0xbb), 0)
    await client.flush()
    assert.equal(client.stats().retriedRequests, 0, 'the write in flight was not sent again')
    assert.ok(client.connectionInfo().every((c) => c.path === 2))
    await sleep(500)
    assert.ok(readFileSync(disk).subarray(0, L).every((byte) => byte === 0xbb), 'the later write is what the disk holds')
    assert.ok((await client.read(L, 0)).every((byte) => byte === 0xbb))
  })

  test('a connection that leaves a path FLUSHes what it acknowledged there before it disconnects: a write-back cache on the old path loses nothing', async () => {
    const disk = image('cache')
    const log = path.join(dir, 'cache-a.log')
    // Path 1 keeps writes in a volatile cache (nbdkit's cache filter) and takes 1 s per write.
    const a = await nbdkit('cache-a', ['--filter=log', '--filter=delay', '--filter=cache', 'file', disk, 'wdelay=1', 'cache=writeback', `logfile=${log}`])
    const b = await nbdkit('cache-b', ['--filter=cache', 'file', disk, 'cache=writeback'])
    const client = await switchWithWriteInFlight(a, b)
    await client.flush()
    await until('path 1\'s connection disconnected', () => readFileSync(log, 'utf8').includes('Disconnect'))
    const events = readFileSync(log, 'utf8').split('\n').flatMap((line) => /\.\.\.(Write|Flush) id=\d+ return=0|Disconnect/.exec(line)?.[0] ?? [])
    assert.deepEqual(events.map((e) => e.replace(/ id=\d+ return=0|\.\.\./g, '')), ['Write', 'Flush', 'Disconnect'])
    await a.stop('SIGKILL')
    assert.equal(readFileSync(disk)[0], 0xaa, 'the acknowledged write survived its server')
  })

  test('a connection that leaves a path and dies before its own FLUSH: the next FLUSH writes its writes again (from the log) and vouches for them', async () => {
    const disk = image('owed')
    const log = path.join(dir, 'owed-b.log')
    // Two eval servers over one file, alike but for path 1's slow writes and slower FLUSH.
    const methods = (slow: boolean): string[] => [
      'get_size=echo 4194304',
      `pread=dd if=${disk} skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none`,
      `pwrite=${slow ? 'sleep 1; ' : ''}dd of=${disk} seek=$4 conv=notrunc oflag=seek_bytes status=none`,
      `flush=${slow ? 'sleep 5' : 'exit 0'}`
    ]
    const a = await nbdkit('owed-a', ['eval', ...methods(true)])
    const b = await nbdkit('owed-b', ['--filter=log', 'eval', ...methods(false), `logfile=${log}`])
    const client = await switchWithWriteInFlight(a, b)
    // Path 1's own FLUSH is on its way (5 s): its server dies first.
    await sleep(300)
    await a.stop('SIGKILL')
    await within(client.flush(), 10_000, 'the FLUSH')
    assert.match(readFileSync(log, 'utf8'), /Write id=\d+ offset=0x0 count=0x1000/, 'the write was written again on path 2')
    assert.equal(readFileSync(disk)[0], 0xaa)
  })

  test('round-robin: a FLUSH while one path\'s connection reconnects waits for its replay; a write that path\'s lost cache held is on the disk', async () => {
    const disk = image('rr-cache')
    const args = ['--filter=multi-conn', '--filter=cache', 'file', disk, 'cache=writeback', 'multi-conn-mode=plugin']
    const a = await nbdkit('rr-cache-a', args)
    const b = await nbdkit('rr-cache-b', args)
    const client = await NbdClient.connect({ uri: a.uri(), paths: [b.uri()], pathSelector: 'round-robin', connections: 2, reconnectDelay: 10_000, pollingInterval: 60_000, backoff })
    defer(() => client.close())
    assert.deepEqual(client.connectionInfo().map((c) => c.path), [1, 2])
    await client.write(Buffer.alloc(4096, 0xaa), 0)
    await a.stop('SIGKILL')
    await until('connection 1 reconnecting', () => client.states().some((state) => state !== 'CONNECTED'), 5000)
    await within(client.flush(), 15_000, 'the FLUSH')
    assert.equal(readFileSync(disk)[0], 0xaa, 'the write path 1 acknowledged, then lost with its cache, was written again and flushed')
  })

  test('a write on a hung path is in doubt: its caller is told, an overlapping write is refused, FLUSH and other I/O go on; once the server answers, the range is free', async () => {
    const disk = image('hung')
    const a = await nbdkit('hung-a', ['file', disk])
    const b = await nbdkit('hung-b', ['file', disk])
    const client = await NbdClient.connect({ uri: a.uri(), paths: [b.uri()], reconnectDelay: 1500, requestTimeout: 1000, pollingInterval: 200, backoff })
    defer(() => client.close())
    await client.write(Buffer.alloc(4096, 0x11), 0)
    await client.flush()
    await stopServer(a.pid)
    try {
      const caller = handled(client.write(Buffer.alloc(4096, 0xaa), 0))
      const err = await within(caller.then(() => null, (e: Error) => e), 10_000, 'the write on the hung path')
      assert.ok(err !== null, 'the write on the hung path is not reported as done')
      await rejectsWithCode(client.write(Buffer.alloc(512, 0xbb), 1024), 'NBD_ERR_IN_DOUBT')
      // A FLUSH vouches for completed writes only: it need not wait for the one in doubt.
      await within(client.flush(), 5000, 'a FLUSH while a write is in doubt')
      await within(client.write(Buffer.alloc(4096, 0xcc), 65536), 5000, 'a write elsewhere')
      assert.equal((await within(client.read(1, 65536), 5000, 'a read'))[0], 0xcc)
      assert.ok(client.connectionInfo().some((c) => c.path === 2), 'I/O moved to path 2')
    } finally {
      process.kill(a.pid, 'SIGCONT')
    }
    // The hung server runs the write it had (0xAA) and closes; the range is free again.
    const deadline = Date.now() + 10_000
    for (;;) {
      const outcome = await client.write(Buffer.alloc(4096, 0xbb), 0).then(() => 'ok', (e: { code?: string }) => e.code)
      if (outcome === 'ok') break
      assert.equal(outcome, 'NBD_ERR_IN_DOUBT')
      assert.ok(Date.now() < deadline, 'the range stays refused after the server answered')
      await sleep(100)
    }
    await client.flush()
    await sleep(300)
    assert.equal(readFileSync(disk)[0], 0xbb, 'the write refused until the first was over lands after it')
    assert.equal((await client.read(1, 0))[0], 0xbb)
  })

  test('no-path-retry 0 (the default): kill -9 of the active path fails nothing while path 2 is usable', async () => {
    const disk = image('kill0', 16 << 20)
    const a = await nbdkit('kill0-a', ['--filter=delay', 'file', disk, 'wdelay=200ms'])
    const b = await nbdkit('kill0-b', ['file', disk])
    const client = await NbdClient.connect({ uri: a.uri(), paths: [b.uri()], pollingInterval: 500, backoff })
    defer(() => client.close())
    const writes = Array.from({ length: 8 }, (_, i) => client.write(Buffer.alloc(4096, i + 1), i * 4096).then(() => 'ok', (e: { code?: string }) => e.code))
    await sleep(50)
    await a.stop('SIGKILL')
    assert.deepEqual(await within(Promise.all(writes), 15_000, 'the writes'), Array(8).fill('ok'))
    const back = await client.read(8 * 4096, 0)
    for (let i = 0; i < 8; i++) assert.equal(back[i * 4096], i + 1)
    assert.equal(client.stats().failedByDelay, 0)
  })

  test('switch path 2 holds under failback immediate while path 1 stays ready', async () => {
    const disk = image('hold')
    const a = await nbdkit('hold-a', ['file', disk])
    const b = await nbdkit('hold-b', ['file', disk])
    const client = await NbdClient.connect({ uri: a.uri(), paths: [b.uri()], failback: 'immediate', pollingInterval: 100, backoff })
    defer(() => client.close())
    await until('path 2 checked ready', () => client.paths()[1]!.state === 'ready')
    client.switchPath(2)
    await client.write(Buffer.alloc(512, 1), 0)
    await sleep(800)
    assert.equal(client.paths()[1]!.active, true, 'the administrator\'s choice holds')
    assert.equal(client.paths()[0]!.state, 'ready')
    assert.ok(client.connectionInfo().every((c) => c.path === 2))
  })

  test('identity bytes are checked on every connection: a path that now shows another disk is refused, nothing is read from or written to it', async () => {
    const disk = path.join(dir, 'ident.img')
    writeFileSync(disk, Buffer.concat([Buffer.alloc(4096, 0x33), Buffer.alloc((4 << 20) - 4096)]))
    const other = image('ident-other', 4 << 20, 0x77)
    const a = await nbdkit('ident-a', ['file', disk])
    const b = await nbdkit('ident-b', ['file', disk])
    const client = await NbdClient.connect({ uri: a.uri(), paths: [b.uri()], pathIdentity: { offset: 0, length: 4096 }, reconnectDelay: 2000, pollingInterval: 300, backoff })
    defer(async () => { client.destroy() })
    await a.stop('SIGKILL')
    rmSync(a.socket, { force: true })
    // Another disk of the same size appears at path 1's socket, and path 2 goes away.
    const impostor = await nbdkit('ident-a', ['file', other])
    assert.equal(impostor.socket, a.socket)
    await b.stop('SIGKILL')
    await rejectsWithCode(client.read(1, 0), 'NBD_ERR_RECONNECT_DELAY', 10_000)
    await rejectsWithCode(client.write(Buffer.alloc(512, 0xee), 8192), 'NBD_ERR_RECONNECT_DELAY', 10_000)
    await until('path 1 refused', () => /refused/.test(client.paths()[0]!.checker))
    assert.ok(readFileSync(other).every((byte) => byte === 0x77), 'nothing was written to the other disk')
  })

  test('the client\'s own writes to the identity bytes keep every path usable', async () => {
    const disk = image('own')
    const a = await nbdkit('own-a', ['file', disk])
    const b = await nbdkit('own-b', ['file', disk])
    const client = await NbdClient.connect({ uri: a.uri(), paths: [b.uri()], pathIdentity: { offset: 0, length: 4096 }, pollingInterval: 100, backoff })
    defer(() => client.close())
    // As mounting ext4 rewrites its superblock.
    await client.write(Buffer.from('superblock: mount count 2'), 1024)
    await client.writeZeroes(512, 2048)
    await client.flush()
    await sleep(800)
    assert.deepEqual(client.paths().map((p) => p.state), ['ready', 'ready'], JSON.stringify(client.paths()))
    await a.stop('SIGKILL')
    assert.equal((await within(client.read(10, 1024), 10_000, 'a read on path 2')).toString(), 'superblock')
  })

  test('a standby path that hangs READs does not hang connect() or close()', async () => {
    const disk = image('slow')
    const a = await nbdkit('slow-a', ['file', disk])
    const b = await nbdkit('slow-b', ['--filter=delay', 'file', disk, 'rdelay=3600'])
    const client = await within(NbdClient.connect({ uri: a.uri(), paths: [b.uri()], pollingInterval: 200, backoff }), 15_000, 'connect()')
    assert.equal(client.paths()[1]!.state, 'failed')
    await within(client.close(), 5000, 'close()')
  })
})
