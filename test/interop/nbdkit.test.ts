/**
 * Interop with nbdkit: plugins that make data checkable byte for byte (memory, pattern,
 * sparse-random, data) and filters that make the server strict, faulty, slow or limited.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { after, describe, test } from 'node:test'
import { NbdClient } from '../../src/index.ts'
import { rejectsWithCode, within, handled } from '../helpers/assert.ts'
import { run, startNbdkit, tcpPort, tempDir, type RunningServer } from '../helpers/servers.ts'

const dir = tempDir()
const stops: Array<() => Promise<void>> = []
after(async () => { await Promise.all(stops.map((s) => s())) })

async function nbdkit (args: string[], name: string): Promise<RunningServer> {
  const server = await startNbdkit(dir, args, name)
  stops.push(() => server.stop())
  return server
}

/** Checks that every 8-byte word holds its own offset (nbdkit's pattern plugin). */
function assertPattern (buf: Buffer, offset: bigint): void {
  // Compare whole aligned words; the ends of an unaligned read are checked byte by byte.
  for (let i = 0; i < buf.length; i++) {
    const at = offset + BigInt(i)
    const word = at - (at % 8n)
    const expected = Number((word >> BigInt(8 * (7 - Number(at % 8n)))) & 0xffn)
    if (buf[i] !== expected) assert.fail(`byte at ${at} is ${buf[i]}, expected ${expected}`)
  }
}

function logLines (file: string, verb: string): string[] {
  // Request lines read "connection=1 Write id=2 offset=... ..."; replies start with "...Write".
  return readFileSync(file, 'utf8').split('\n').filter((l) => l.includes(` ${verb} id=`) && !l.includes(`...${verb}`))
}

describe('nbdkit memory', () => {
  test('writes and reads back every byte, at any offset and length', async () => {
    const server = await nbdkit(['memory', '64M'], 'mem')
    const client = await NbdClient.connect(server.uri())
    assert.equal(client.size, 64 << 20)
    assert.equal(client.info.mode, 'structured')
    const image = Buffer.alloc(64 << 20)
    const writes: Array<[number, number]> = [[0, 4096], [1, 1], [4095, 2], [12345, 100_000], [(1 << 20) - 3, 3 << 20], [(64 << 20) - 7, 7], [30 << 20, 33 << 20]]
    for (const [offset, length] of writes) {
      const data = randomBytes(length)
      await client.write(data, offset)
      data.copy(image, offset)
    }
    // Whole image, through reads split at the 32 MiB maximum payload.
    assert.ok((await client.read(64 << 20, 0)).equals(image))
    for (const [offset, length] of [[3, 5], [4090, 20000], [(64 << 20) - 1, 1]] as const) {
      assert.ok((await client.read(length, offset)).equals(image.subarray(offset, offset + length)), `read ${offset}+${length}`)
    }
    // An independent reader agrees.
    const { stdout } = await run('nbdcopy', [server.uri(), '-'])
    assert.ok(stdout.equals(image), 'nbdcopy sees the same bytes')
    await client.close()
  })

  test('trim, zeroes, cache, flush, FUA and block status', async () => {
    const server = await nbdkit(['memory', '16M'], 'mem2')
    const client = await NbdClient.connect(server.uri())
    await client.write(Buffer.alloc(1 << 20, 0xab), 0, { fua: true })
    await client.flush()
    await client.cache(1 << 20, 0)
    await client.writeZeroes(8192, 4096)
    await client.writeZeroes(7, 100_001, { noHole: true })
    await client.writeZeroes(65536, 200_000, { fastZero: true })
    const back = await client.read(1 << 20, 0)
    const expected = Buffer.alloc(1 << 20, 0xab)
    expected.fill(0, 4096, 4096 + 8192)
    expected.fill(0, 100_001, 100_008)
    expected.fill(0, 200_000, 200_000 + 65536)
    assert.ok(back.equals(expected))
    await client.trim(1 << 20, 0)
    // The memory plugin punches holes on trim: they read as zero and map as holes.
    assert.ok((await client.read(4096, 0)).equals(Buffer.alloc(4096)))
    const status = await client.blockStatus(16 << 20, 0)
    const extents = status.get('base:allocation')!
    assert.equal(extents.reduce((n, e) => n + e.length, 0), 16 << 20)
    assert.ok(extents.every((e) => e.flags === 3), 'all hole,zero after trimming everything written')
    const one = await client.blockStatus(512, 4096, { reqOne: true })
    assert.equal(one.get('base:allocation')!.length, 1)
    await client.close()
  })

  test('out-of-range and unsupported requests are refused before anything is sent', async () => {
    const log = path.join(dir, 'refuse.log')
    const server = await nbdkit(['-r', '--filter=log', 'memory', '1M', `logfile=${log}`], 'ro')
    const client = await NbdClient.connect(server.uri())
    assert.equal(client.info.flags & 2, 2, 'read-only')
    await rejectsWithCode(client.write(Buffer.alloc(512), 0), 'NBD_ERR_NOT_SUPPORTED', 1000, /read-only/)
    await rejectsWithCode(client.trim(512, 0), 'NBD_ERR_NOT_SUPPORTED', 1000)
    await rejectsWithCode(client.read(1, 1 << 20), 'NBD_ERR_INVALID_ARGUMENT', 1000, /past the end/)
    await rejectsWithCode(client.read(1, -1), 'NBD_ERR_INVALID_ARGUMENT', 1000)
    await rejectsWithCode(client.read(1, 0.5), 'NBD_ERR_INVALID_ARGUMENT', 1000)
    assert.equal((await client.read(0, 1 << 20)).length, 0, 'zero-length reads never reach the wire')
    await client.close()
    await server.stop()
    assert.deepEqual(logLines(log, 'Write'), [])
    assert.deepEqual(logLines(log, 'Read'), [])
  })
})

describe('nbdkit pattern', () => {
  test('reads reassemble at every offset (1G pattern)', async () => {
    const server = await nbdkit(['pattern', '1G'], 'pat')
    const client = await NbdClient.connect(server.uri(), { maxInFlight: 64 })
    assertPattern(await client.read(40 << 20, 0), 0n)
    const reads = Array.from({ length: 200 }, () => {
      const offset = Math.floor(Math.random() * ((1 << 30) - 70000))
      const length = 1 + Math.floor(Math.random() * 65536)
      return client.read(length, offset).then((buf) => { assertPattern(buf, BigInt(offset)) })
    })
    await Promise.all(reads)
    await client.close()
  })

  test('offsets near 2^63 stay exact (bigint throughout)', async () => {
    const server = await nbdkit(['pattern', '9223372036854775807'], 'pathuge')
    const client = await NbdClient.connect(server.uri())
    assert.equal(client.sizeBigInt, 9223372036854775807n)
    assert.throws(() => client.size, { code: 'NBD_ERR_RANGE' })
    const offset = 9223372036854771704n
    const buf = await client.read(8, offset)
    assert.equal(buf.readBigUInt64BE(0), offset)
    assertPattern(await client.read(13, client.sizeBigInt - 13n), client.sizeBigInt - 13n)
    await client.close()
  })
})

describe('nbdkit sparse-random and data', () => {
  test('sparse image: data and map agree with nbdcopy and nbdinfo', async () => {
    const server = await nbdkit(['sparse-random', '64M', 'seed=42', 'percent=25', 'runlength=1048576'], 'sparse')
    const client = await NbdClient.connect(server.uri(), { maxInFlight: 32 })
    const ours = await client.read(64 << 20, 0)
    const { stdout } = await run('nbdcopy', [server.uri(), '-'])
    assert.ok(ours.equals(stdout))
    const map: Array<{ offset: number, length: number, type: number }> = []
    for await (const e of client.map()) map.push({ offset: Number(e.offset), length: e.length, type: e.flags })
    const nbdinfo = JSON.parse((await run('nbdinfo', ['--map', '--json', server.uri()])).stdout.toString()) as Array<{ offset: number, length: number, type: number }>
    assert.deepEqual(map, nbdinfo.map(({ offset, length, type }) => ({ offset, length, type })))
    // sparse-random checks writes: writing back what we read is accepted, anything else is EIO.
    await client.write(ours.subarray(0, 1 << 20), 0)
    await rejectsWithCode(client.write(Buffer.alloc(512, 1), 0), 'NBD_ERR_SERVER', 3000, /EIO/)
    await client.close()
  })

  test('exact bytes from the data plugin, and an export of 17 bytes', async () => {
    const server = await nbdkit(['data', '1 2 3 @0x1000 0x55 0xaa', 'size=1M'], 'data')
    const client = await NbdClient.connect(server.uri())
    assert.deepEqual([...await client.read(4, 0)], [1, 2, 3, 0])
    assert.deepEqual([...await client.read(4, 0xfff)], [0, 0x55, 0xaa, 0])
    await client.close()
    const tiny = await nbdkit(['data', 'base64=aGVsbG8gbmJka2l0IHVzZXI='], 'tiny')
    const small = await NbdClient.connect(tiny.uri())
    assert.equal(small.size, 17)
    assert.equal((await small.read(17, 0)).toString(), 'hello nbdkit user')
    assert.equal((await small.read(1, 16)).toString(), 'r')
    await small.close()
  })

  test('export names and listing (info and exportname filter)', async () => {
    const server = await nbdkit(['info', 'mode=exportname'], 'names')
    const client = await NbdClient.connect(server.uri('hello-export'))
    assert.equal((await client.read(12, 0)).toString(), 'hello-export')
    await client.close()
    const empty = await NbdClient.connect(server.uri(''))
    assert.equal(empty.size, 0, 'export "" of mode=exportname has size 0')
    await empty.close()

    const listed = await nbdkit(['--filter=exportname', 'memory', '1M', 'exportname-list=explicit', 'exportname=alpha',
      'exportname=beta', 'exportdesc=fixed:a test export', 'default-export=alpha', 'exportname-strict=true'], 'listed')
    const exports = await NbdClient.list(listed.uri())
    assert.deepEqual(exports.map((e) => [e.name, e.description, e.info?.size]), [['alpha', 'a test export', 1 << 20], ['beta', 'a test export', 1 << 20]])
    await rejectsWithCode(NbdClient.connect(listed.uri('gamma')), 'NBD_ERR_HANDSHAKE', 3000, /no export named "gamma"/)
  })
})

describe('nbdkit filters', () => {
  test('error filter: each command fails with its own errno and nothing is poisoned', async () => {
    const server = await nbdkit(['--filter=error', 'memory', '1M', 'error-pread=EIO', 'error-pread-rate=100%',
      'error-zero=EPERM', 'error-zero-rate=100%', 'error-trim=EINVAL', 'error-trim-rate=100%',
      'error-pwrite=ENOSPC', 'error-pwrite-rate=100%', 'error-cache=ENOMEM', 'error-cache-rate=100%'], 'errors')
    const client = await NbdClient.connect(server.uri())
    const cases: Array<[Promise<unknown>, string]> = [
      [handled(client.read(512, 0)), 'EIO'],
      [handled(client.writeZeroes(512, 0)), 'EPERM'],
      [handled(client.trim(512, 0)), 'EINVAL'],
      [handled(client.write(Buffer.alloc(512), 0)), 'ENOSPC'],
      [handled(client.cache(512, 0)), 'ENOMEM']
    ]
    for (const [promise, errno] of cases) {
      const err = await rejectsWithCode(promise, 'NBD_ERR_SERVER')
      assert.equal((err as unknown as { errno: string }).errno, errno)
    }
    await client.flush()
    assert.equal(client.state, 'CONNECTED')
    assert.equal(client.stats().serverErrors, 5)
    await client.close()
  })

  test('ENOSPC from the full plugin', async () => {
    const server = await nbdkit(['full', '1M'], 'full')
    const client = await NbdClient.connect(server.uri())
    const err = await rejectsWithCode(client.write(Buffer.alloc(4096, 1), 0), 'NBD_ERR_SERVER')
    assert.equal((err as unknown as { errno: string }).errno, 'ENOSPC')
    await client.close()
  })

  test('blocksize-policy: unaligned I/O is made correct, large I/O split, the server never sees a violation', async () => {
    const log = path.join(dir, 'bs.log')
    const server = await nbdkit(['--filter=log', '--filter=blocksize-policy', 'memory', '16M', `logfile=${log}`,
      'blocksize-minimum=4096', 'blocksize-preferred=65536', 'blocksize-maximum=1M', 'blocksize-error-policy=error'], 'bsp')
    const client = await NbdClient.connect(server.uri(), { maxInFlight: 8 })
    assert.equal(client.minBlockSize, 4096)
    assert.equal(client.maxPayload, 1 << 20)
    const size = 16 << 20
    const image = Buffer.alloc(size)
    // Byte ranges that never overlap but share blocks at their edges, all in flight at once:
    // two read-modify-writes of one block must not undo each other.
    const writes: Array<Promise<void>> = []
    let at = 0
    for (let i = 0; at < size; i++) {
      const length = Math.min(1 + Math.floor(Math.random() * (i % 20 === 0 ? 3 << 20 : 6000)), size - at)
      const data = randomBytes(length)
      data.copy(image, at)
      writes.push(client.write(data, at))
      at += length + Math.floor(Math.random() * 3)
    }
    await within(Promise.all(writes), 60_000, `${writes.length} concurrent writes`)
    for (const offset of [1, 4095, 4097, 8191, 12345]) {
      await client.write(Buffer.from([offset & 0xff]), offset)
      image[offset] = offset & 0xff
    }
    await client.writeZeroes(100_000, 5000)
    image.fill(0, 5000, 105_000)
    const back = await client.read(size, 0)
    assert.ok(back.equals(image), 'every byte as written')
    const { stdout } = await run('nbdcopy', [server.uri(), '-'])
    assert.ok(back.equals(stdout), 'nbdcopy agrees with our reads')
    await client.close()
    await server.stop()
    const text = readFileSync(log, 'utf8')
    assert.doesNotMatch(text, /return=-1/, 'no request failed on the server')
    for (const line of text.split('\n').filter((l) => / (Read|Write|Zero) id=/.test(l))) {
      const offset = Number.parseInt(/offset=0x([0-9a-f]+)/.exec(line)![1]!, 16)
      const count = Number.parseInt(/count=0x([0-9a-f]+)/.exec(line)![1]!, 16)
      assert.equal(offset % 4096, 0, line)
      assert.equal(count % 4096, 0, line)
      if (!line.includes(' Zero ')) assert.ok(count <= 1 << 20, line)
    }
  })

  test('blocksize filter (server-side fix-ups): byte-granular requests pass straight through', async () => {
    const server = await nbdkit(['--filter=blocksize', 'memory', '1M', 'minblock=4096', 'maxdata=64k'], 'bsf')
    const client = await NbdClient.connect(server.uri())
    assert.equal(client.minBlockSize, 1)
    await client.write(Buffer.from('xyz'), 10)
    assert.equal((await client.read(5, 9)).toString('hex'), '0078797a00')
    await client.close()
  })

  test('flags on the wire: FUA, NO_HOLE, FAST_ZERO, REQ_ONE (log filter)', async () => {
    const log = path.join(dir, 'flags.log')
    const server = await nbdkit(['--filter=log', 'memory', '1M', `logfile=${log}`], 'flags')
    const client = await NbdClient.connect(server.uri())
    await client.write(Buffer.alloc(512), 0, { fua: true })
    await client.writeZeroes(4096, 0, { noHole: true, fastZero: true })
    await client.writeZeroes(4096, 4096, { fastZero: true })
    await client.blockStatus(4096, 0, { reqOne: true })
    await client.close()
    await server.stop()
    assert.match(logLines(log, 'Write')[0]!, /fua=1/)
    const zeroes = logLines(log, 'Zero')
    assert.match(zeroes[0]!, /trim=0 fua=0 fast=1/)
    assert.match(zeroes[1]!, /trim=1 fua=0 fast=1/)
    assert.match(logLines(log, 'Extents')[0]!, /req_one=1/)
  })

  test('no FUA on the server: FUA is emulated with FLUSH; no zeroing: zeroes are written', async () => {
    const log = path.join(dir, 'nofua.log')
    const server = await nbdkit(['--filter=log', '--filter=fua', '--filter=nozero', 'memory', '1M', `logfile=${log}`], 'nofua')
    const client = await NbdClient.connect(server.uri())
    assert.equal(client.info.flags & 8, 0, 'no SEND_FUA')
    await client.write(Buffer.alloc(512, 1), 0, { fua: true })
    await client.write(Buffer.alloc(4096, 1), 4096)
    await client.writeZeroes(4096, 4096)
    assert.ok((await client.read(4096, 4096)).equals(Buffer.alloc(4096)))
    await rejectsWithCode(client.writeZeroes(4096, 0, { fastZero: true }), 'NBD_ERR_NOT_SUPPORTED')
    await client.close()
    await server.stop()
    assert.equal(logLines(log, 'Flush').length, 1, 'one FLUSH stands in for FUA')
    assert.equal(logLines(log, 'Zero').length, 0)
  })

  test('delay filter: replies out of order reach their callers', async () => {
    const server = await nbdkit(['--filter=delay', 'memory', '1M', 'delay-read=300ms'], 'delay')
    const client = await NbdClient.connect(server.uri())
    await client.write(Buffer.alloc(4096, 9), 0)
    const order: string[] = []
    await Promise.all([
      client.read(4096, 0).then((b) => { assert.equal(b[0], 9); order.push('read') }),
      client.write(Buffer.alloc(4096, 1), 8192).then(() => order.push('write')),
      client.flush().then(() => order.push('flush'))
    ])
    assert.deepEqual(order, ['write', 'flush', 'read'])
    await client.close()
  })

  test('no structured replies (--no-sr): simple replies, no block status', async () => {
    const server = await nbdkit(['--no-sr', 'pattern', '1M'], 'nosr')
    const client = await NbdClient.connect(server.uri())
    assert.equal(client.info.mode, 'simple')
    assertPattern(await client.read(70000, 1000), 1000n)
    await rejectsWithCode(client.blockStatus(4096, 0), 'NBD_ERR_NOT_SUPPORTED', 1000, /no meta context/)
    await client.close()
  })

  test('non-fixed newstyle (--mask-handshake=0) and oldstyle (-o)', async () => {
    const server = await nbdkit(['--mask-handshake=0', 'pattern', '1M'], 'nonfixed')
    const client = await NbdClient.connect(server.uri())
    assert.equal(client.info.protocol, 'newstyle')
    assertPattern(await client.read(64, 8), 8n)
    await client.close()
    const old = await nbdkit(['-o', 'pattern', '1M'], 'oldstyle')
    await rejectsWithCode(NbdClient.connect(old.uri()), 'NBD_ERR_HANDSHAKE', 3000, /oldstyle/)
  })

  test('TCP on loopback', async () => {
    const port = tcpPort()
    const { spawn } = await import('node:child_process')
    const child = spawn('nbdkit', ['--exit-with-parent', '-f', '-i', '127.0.0.1', '-p', String(port), 'pattern', '1M'], { stdio: 'ignore' })
    stops.push(async () => { child.kill() })
    const client = await NbdClient.connect(`nbd://127.0.0.1:${port}/`, { openTimeout: 5000, backoff: { initialMs: 50, maxMs: 200 } })
    assertPattern(await client.read(4096, 4096), 4096n)
    await within(client.close(), 3000)
  })
})
