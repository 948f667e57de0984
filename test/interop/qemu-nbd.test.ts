/**
 * Interop with qemu-nbd: the server that sends what nbdkit 1.32 never does (OFFSET_HOLE chunks,
 * multi-chunk reads, error messages, NONE chunks) and the qemu: meta contexts.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { after, before, describe, test } from 'node:test'
import { NbdClient } from '../../src/index.ts'
import { rejectsWithCode } from '../helpers/assert.ts'
import { run, startQemuNbd, tempDir, type RunningServer } from '../helpers/servers.ts'

const dir = tempDir()
const M = 1 << 20
let qcow: RunningServer
const stops: Array<() => Promise<void>> = []

before(async () => {
  // A qcow2 with a backing file, a dirty bitmap, data in both layers and a zeroed range.
  const base = path.join(dir, 'base.qcow2')
  const top = path.join(dir, 'top.qcow2')
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', base, '64M'])
  await run('qemu-io', ['-c', 'write -P 0x11 0 1M', base])
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top])
  await run('qemu-img', ['bitmap', '--add', top, 'bitmap0'])
  await run('qemu-io', ['-c', 'write -P 0x22 2M 512k', '-c', 'write -z 8M 1M', '-c', 'write -P 0x33 20M 12k', top])
  qcow = await startQemuNbd(dir, ['-f', 'qcow2', '-x', 'exp', '-D', 'qemu test export', '-B', 'bitmap0', '-A', top], 'qcow')
  stops.push(() => qcow.stop())
})
after(async () => { await Promise.all(stops.map((s) => s())) })

function expectedImage (): Buffer {
  const image = Buffer.alloc(64 * M)
  image.fill(0x11, 0, M)
  image.fill(0x22, 2 * M, 2 * M + 512 * 1024)
  image.fill(0x33, 20 * M, 20 * M + 12 * 1024)
  return image
}

async function nbdinfoMap (uri: string, context: string): Promise<Array<{ offset: number, length: number, type: number }>> {
  const out = await run('nbdinfo', [`--map=${context}`, '--json', uri])
  return (JSON.parse(out.stdout.toString()) as Array<{ offset: number, length: number, type: number }>).map(({ offset, length, type }) => ({ offset, length, type }))
}

describe('qemu-nbd', () => {
  test('what the handshake says: description, block sizes, contexts', async () => {
    const client = await NbdClient.connect(qcow.uri('exp'), { listContexts: true })
    assert.equal(client.info.description, 'qemu test export')
    assert.deepEqual(client.info.blockSize, { minimum: 1, preferred: 4096, maximum: 32 * M })
    assert.deepEqual([...client.info.availableContexts!].sort(), ['base:allocation', 'qemu:allocation-depth', 'qemu:dirty-bitmap:bitmap0'])
    await client.close()
  })

  test('hole and multi-chunk reads reassemble byte for byte', async () => {
    const client = await NbdClient.connect(qcow.uri('exp'), { maxInFlight: 32 })
    const image = expectedImage()
    assert.ok((await client.read(64 * M, 0)).equals(image))
    // Unaligned reads that straddle data and holes.
    for (const [offset, length] of [[M - 100, 200], [2 * M + 512 * 1024 - 1, 3], [20 * M + 4095, 8193], [7, 4 * M]]) {
      assert.ok((await client.read(length!, offset!)).equals(image.subarray(offset, offset! + length!)), `${offset}+${length}`)
    }
    const chunks = client.stats().chunks
    assert.ok(chunks.hole > 0, `OFFSET_HOLE chunks arrived (${JSON.stringify(chunks)})`)
    assert.ok(chunks.data > client.stats().requests.read, 'some reads came in several chunks')
    await client.close()
  })

  test('maps for base:allocation, qemu:dirty-bitmap and qemu:allocation-depth match nbdinfo', async () => {
    for (const context of ['base:allocation', 'qemu:dirty-bitmap:bitmap0', 'qemu:allocation-depth']) {
      const client = await NbdClient.connect(qcow.uri('exp'), { metaContexts: [context] })
      const ours = []
      for await (const e of client.map(undefined, 0, { context })) ours.push({ offset: Number(e.offset), length: e.length, type: e.flags })
      await client.close()
      assert.deepEqual(ours, await nbdinfoMap(qcow.uri('exp'), context), context)
    }
    // Several contexts at once: one chunk per context in each reply.
    const client = await NbdClient.connect(qcow.uri('exp'), { metaContexts: ['base:allocation', 'qemu:dirty-bitmap:bitmap0'] })
    const status = await client.blockStatus(4 * M, 2 * M)
    assert.deepEqual(status.get('qemu:dirty-bitmap:bitmap0')![0], { offset: 2 * M, length: 512 * 1024, flags: 1 })
    assert.equal(status.get('base:allocation')![0]!.flags, 0)
    await client.close()
  })

  test('writes: split under qemu\'s 32 MiB limit, errors carry qemu\'s messages', async () => {
    const raw = path.join(dir, 'raw.img')
    await run('qemu-img', ['create', '-q', '-f', 'raw', raw, '64M'])
    const server = await startQemuNbd(dir, ['-f', 'raw', raw], 'raw')
    stops.push(() => server.stop())
    const client = await NbdClient.connect(server.uri())
    const data = randomBytes(40 * M)
    await client.write(data, 3 * M + 1, { fua: true })
    await client.flush()
    assert.ok((await client.read(40 * M, 3 * M + 1)).equals(data))
    await client.writeZeroes(5, 3 * M + 1)
    await client.close()
    await server.stop()
    const file = readFileSync(raw)
    assert.ok(file.subarray(3 * M + 6, 43 * M + 1).equals(data.subarray(5)))
    assert.ok(file.subarray(3 * M + 1, 3 * M + 6).equals(Buffer.alloc(5)))

    const ro = await startQemuNbd(dir, ['-r', '-f', 'raw', raw], 'raw-ro')
    stops.push(() => ro.stop())
    const reader = await NbdClient.connect(ro.uri())
    await rejectsWithCode(reader.write(Buffer.alloc(1), 0), 'NBD_ERR_NOT_SUPPORTED', 1000, /read-only/)
    await reader.close()
  })
})
