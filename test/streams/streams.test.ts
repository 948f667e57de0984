/**
 * createReadStream / createWriteStream against nbdkit: pipelines through gzip, ranges, sparse
 * object mode (zero runs not read, written back as holes), backpressure on the write side, and
 * errors that reach the stream.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { readFileSync, createWriteStream as fileWriteStream } from 'node:fs'
import path from 'node:path'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { after, before, describe, test } from 'node:test'
import { createGunzip, createGzip, gunzipSync } from 'node:zlib'
import { NbdClient, createReadStream, createWriteStream, type SparseChunk } from '../../src/index.ts'
import { rejectsWithCode, within } from '../helpers/assert.ts'
import { run, startNbdkit, tempDir, type RunningServer } from '../helpers/servers.ts'

const dir = tempDir()
const M = 1 << 20
const SIZE = 8 * M
const image = Buffer.alloc(SIZE)
let src: RunningServer
let client: NbdClient

before(async () => {
  src = await startNbdkit(dir, ['memory', String(SIZE)], 'src')
  client = await NbdClient.connect(src.uri())
  // Data at [1M, 2.5M) and [6M, 6M + 12K); the rest never written (holes that read zeroes).
  randomBytes(1.5 * M).copy(image, M)
  randomBytes(12 * 1024).copy(image, 6 * M)
  await client.write(image.subarray(M, 2.5 * M), M)
  await client.write(image.subarray(6 * M, 6 * M + 12 * 1024), 6 * M)
})
after(async () => {
  await client.close()
  await src.stop()
})

async function collect (stream: Readable): Promise<unknown[]> {
  const out: unknown[] = []
  for await (const chunk of stream) out.push(chunk)
  return out
}

describe('createReadStream', () => {
  test('pipeline(createReadStream(client), createGzip(), file) writes the whole export', async () => {
    const file = path.join(dir, 'export.gz')
    await pipeline(createReadStream(client), createGzip(), fileWriteStream(file))
    assert.ok(gunzipSync(readFileSync(file)).equals(image))
  })

  test('start and end (inclusive, as fs.createReadStream), chunk size, bad ranges refused', async () => {
    const chunks: Buffer[] = []
    const stream = createReadStream(client, { start: M - 100, end: 2 * M + 99, highWaterMark: 64 * 1024 })
    stream.on('data', (d: Buffer) => chunks.push(d))
    await within(new Promise((resolve, reject) => stream.once('end', resolve).once('error', reject)), 10_000)
    assert.ok(Buffer.concat(chunks).equals(image.subarray(M - 100, 2 * M + 100)))
    // Flowing mode hands out each read as it is: none larger than the chunk size.
    assert.ok(chunks.every((c) => c.length <= 64 * 1024))
    assert.throws(() => createReadStream(client, { end: SIZE }), { code: 'NBD_ERR_INVALID_ARGUMENT' })
    assert.throws(() => createReadStream(client, { start: 5, end: 3 }), { code: 'NBD_ERR_INVALID_ARGUMENT' })
  })

  test('sparse: { offset, data } for data, { offset, length, zero } for zero runs, which are not read', async () => {
    const before = client.stats()
    const chunks = await collect(createReadStream(client, { sparse: true, highWaterMark: M })) as SparseChunk[]
    const read = client.stats()
    const rebuilt = Buffer.alloc(SIZE, 0xff)
    let at = 0
    for (const c of chunks) {
      assert.equal(c.offset, at, 'chunks are in order and cover the range')
      if (c.zero === true) {
        rebuilt.fill(0, c.offset, c.offset + c.length)
        at += c.length
      } else {
        c.data.copy(rebuilt, c.offset)
        at += c.data.length
      }
    }
    assert.equal(at, SIZE)
    assert.ok(rebuilt.equals(image))
    const zeroBytes = chunks.reduce((n, c) => n + (c.zero === true ? c.length : 0), 0)
    assert.ok(zeroBytes >= 5 * M, `zero runs skipped: ${zeroBytes}`)
    assert.ok(readBytes(read) - readBytes(before) <= 3 * M, 'only the data was read')
  })

  test('an abort destroys the stream with ABORT_ERR; nothing is left unhandled', async () => {
    const ac = new AbortController()
    const stream = createReadStream(client, { signal: ac.signal, highWaterMark: 4096 })
    const iterate = collect(stream)
    ac.abort()
    await rejectsWithCode(iterate, 'ABORT_ERR')
  })

  test('backpressure: a consumer that does not read stops the reads', async () => {
    const stream = createReadStream(client, { highWaterMark: 64 * 1024, readAhead: 2 })
    const first = await within(new Promise<Buffer>((resolve) => stream.once('data', (d: Buffer) => { stream.pause(); resolve(d) })), 5000)
    assert.equal(first.length, 64 * 1024)
    const settled = readBytes(client.stats())
    await new Promise((resolve) => setTimeout(resolve, 100))
    // Paused: at most the stream's buffer (hwm) plus the reads in flight more.
    assert.ok(readBytes(client.stats()) - settled <= 4 * 64 * 1024)
    stream.destroy()
  })
})

describe('createWriteStream', () => {
  test('small chunks coalesce into large writes at start; finish after FLUSH; reads back', async () => {
    const dst = await startNbdkit(dir, ['--filter=delay', 'memory', String(4 * M), 'delay-write=5ms'], 'dst-w')
    const target = await NbdClient.connect(dst.uri())
    try {
      const data = randomBytes(2 * M + 333)
      let maxInFlight = 0
      const sample = setInterval(() => { maxInFlight = Math.max(maxInFlight, target.connectionInfo()[0]!.inFlight) }, 1)
      const pieces = Array.from({ length: Math.ceil(data.length / 16384) }, (_, i) => data.subarray(i * 16384, (i + 1) * 16384))
      await pipeline(Readable.from(pieces), createWriteStream(target, { start: 4096, highWaterMark: 128 * 1024, requests: 3 }))
      clearInterval(sample)
      assert.ok((await target.read(data.length, 4096)).equals(data))
      assert.ok(maxInFlight <= 3, `at most 3 writes in flight, saw ${maxInFlight}`)
      assert.ok(target.stats().requests.write <= Math.ceil(data.length / (128 * 1024)) + 1, `coalesced: ${target.stats().requests.write} writes`)
      assert.ok(target.stats().requests.flush >= 1)
    } finally {
      await target.close()
      await dst.stop()
    }
  })

  test('sparse pipeline copies an export: data written, zero runs punched (nbdinfo --map shows the holes)', async () => {
    const dst = await startNbdkit(dir, ['memory', String(SIZE)], 'dst-s')
    const target = await NbdClient.connect(dst.uri())
    try {
      await target.write(Buffer.alloc(SIZE, 0x77), 0)
      await pipeline(createReadStream(client, { sparse: true }), createWriteStream(target, { sparse: true }))
      assert.ok((await target.read(SIZE, 0)).equals(image))
      const map = JSON.parse((await run('nbdinfo', ['--map', '--json', dst.uri()])).stdout.toString()) as Array<{ offset: number, length: number, type: number }>
      const holes = map.filter((e) => (e.type & 1) !== 0).reduce((n, e) => n + e.length, 0)
      assert.ok(holes >= 5 * M, `holes in the target: ${holes}`)
    } finally {
      await target.close()
      await dst.stop()
    }
  })

  test('past the end, and a server error, fail the stream with their codes', async () => {
    const dst = await startNbdkit(dir, ['--filter=error', 'memory', String(M), 'error-pwrite=EIO', 'error-pwrite-rate=100%'], 'dst-e')
    const target = await NbdClient.connect(dst.uri())
    try {
      await rejectsWithCode(pipeline(Readable.from([Buffer.alloc(M + 1)]), createWriteStream(target, { flush: false })), 'NBD_ERR_INVALID_ARGUMENT')
      const err = await rejectsWithCode(pipeline(Readable.from([Buffer.alloc(4096)]), createWriteStream(target)), 'NBD_ERR_SERVER')
      assert.equal((err as { errno?: string }).errno, 'EIO')
    } finally {
      await target.close()
      await dst.stop()
    }
  })

  test('gunzip into a write stream restores what a read stream compressed', async () => {
    const dst = await startNbdkit(dir, ['memory', String(SIZE)], 'dst-z')
    const target = await NbdClient.connect(dst.uri())
    try {
      const file = path.join(dir, 'roundtrip.gz')
      await pipeline(createReadStream(client), createGzip(), fileWriteStream(file))
      await pipeline(Readable.from([readFileSync(file)]), createGunzip(), createWriteStream(target))
      assert.ok((await target.read(SIZE, 0)).equals(image))
    } finally {
      await target.close()
      await dst.stop()
    }
  })
})

function readBytes (stats: ReturnType<NbdClient['stats']>): number {
  return stats.bytesRead
}
