/**
 * Workloads that trusted the mounted file to be a file: `cp` of a sparse image (it skips the
 * source's holes, trusting O_TRUNC to have left zeroes), also from one mount onto another
 * (SEEK_HOLE shows real holes); and offsets past 2^53 on an export of 2^60 bytes, exact to
 * the byte for read, write, fallocate and SEEK_DATA.
 */
import assert from 'node:assert/strict'
import { closeSync, openSync, writeFileSync, writeSync } from 'node:fs'
import path from 'node:path'
import { after, describe, test } from 'node:test'
import { NbdClient } from '../../src/client/nbd-client.ts'
import '../helpers/assert.ts'
import { mountExport, type TestMount } from '../helpers/mounts.ts'
import { run, startNbdkit, tempDir, type RunningServer } from '../helpers/servers.ts'

const dir = tempDir()
const stops: Array<() => Promise<void>> = []
after(async () => { for (const s of stops.reverse()) await s().catch(() => {}) })
const MiB = 1024 * 1024

async function server (name: string, args: string[]): Promise<RunningServer> {
  const s = await startNbdkit(dir, args, name)
  stops.push(() => s.stop('SIGKILL'))
  return s
}

async function mounted (uri: string, name: string): Promise<TestMount> {
  const m = await mountExport(dir, uri, name)
  stops.push(() => m.unmount())
  return m
}

function fill (file: string, length: number, byte: number): void {
  const fd = openSync(file, 'r+')
  try {
    for (let at = 0; at < length; at += MiB) writeSync(fd, Buffer.alloc(Math.min(MiB, length - at), byte), 0, Math.min(MiB, length - at), at)
  } finally {
    closeSync(fd)
  }
}

/** A sparse image as a partitioned disk looks: data at the start, a long hole, data at the end. */
function sparseImage (file: string, size: number): Buffer {
  const image = Buffer.alloc(size)
  image.fill(0x11, 0, 64 * 1024)
  image.fill(0x22, size - 64 * 1024)
  writeFileSync(file, '')
  const fd = openSync(file, 'r+')
  try {
    writeSync(fd, image, 0, 64 * 1024, 0)
    writeSync(fd, image, size - 64 * 1024, 64 * 1024, size - 64 * 1024)
  } finally {
    closeSync(fd)
  }
  return image
}

/** Python's os module: Node has neither pread at a bigint offset nor lseek. */
async function py (script: string, ...args: string[]): Promise<string> {
  return (await run('python3', ['-c', script, ...args])).stdout.toString().trim()
}

describe('workloads on the mount', () => {
  test('cp of a sparse image onto a mount full of old data: every hole reads back as zeroes, also mount to mount', async () => {
    const size = 32 * MiB
    const s = await server('cp-dst', ['memory', String(size)])
    const m = await mounted(s.uri(), 'cp-dst.img')
    fill(m.file, size, 0xee)
    const source = path.join(dir, 'sparse.img')
    const image = sparseImage(source, size)
    assert.match(await py('import os,sys; fd=os.open(sys.argv[1],os.O_RDONLY); print(os.lseek(fd,0,os.SEEK_HOLE))', source), /^65536$/, 'the source has a hole after its first 64 KiB')
    await run('cp', [source, m.file])
    const { stdout } = await run('nbdcopy', [s.uri(), '-'])
    assert.ok(stdout.equals(image), 'the export is the image: the old bytes in the holes are gone')

    // Mount to mount: the source mount's SEEK_HOLE reports its real holes, so cp skips them too.
    const t = await server('cp-dst2', ['memory', String(size)])
    const m2 = await mounted(t.uri(), 'cp-dst2.img')
    fill(m2.file, size, 0xdd)
    await run('cp', [m.file, m2.file])
    const second = await run('nbdcopy', [t.uri(), '-'])
    assert.ok(second.stdout.equals(image), 'copied from one mount onto another, holes included')
  })

  test('an export of 2^60 bytes: read, write, punch, zero-range and SEEK_DATA past 2^53 are exact to the byte', async () => {
    const size = 2n ** 60n
    const s = await server('huge', ['memory', `size=${size}`, 'allocator=sparse'])
    const m = await mounted(s.uri(), 'huge.img')
    const at = 2n ** 54n + 5n
    // Write 16 bytes 0xaa at 2^54, punch 3 bytes at 2^54+5, zero 2 at 2^54+12, read all 16 back.
    const script = `
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
base = ${2n ** 54n}
assert os.pwrite(fd, b'\\xaa' * 16, base) == 16
os.close(fd)
os.system('fallocate --punch-hole --offset %d --length 3 %s' % (base + 5, sys.argv[1]))
os.system('fallocate --zero-range --keep-size --offset %d --length 2 %s' % (base + 12, sys.argv[1]))
fd = os.open(sys.argv[1], os.O_RDONLY)
print(os.pread(fd, 16, base).hex())
print(os.lseek(fd, base - 2**36, os.SEEK_DATA))
print(os.lseek(fd, base, os.SEEK_HOLE))
print(os.fstat(fd).st_size)`
    const [bytes, data, hole, st] = (await py(script, m.file)).split('\n')
    assert.equal(bytes, 'aaaaaaaaaa000000aaaaaaaa0000aaaa', 'exactly bytes 5..7 and 12..13 are zero')
    assert.equal(BigInt(data!), at - 5n, 'SEEK_DATA lands exactly on the written page at 2^54')
    assert.ok(BigInt(hole!) > at && BigInt(hole!) <= size, 'SEEK_HOLE past the data')
    assert.equal(BigInt(st!), size)
    // What the server holds, read with a reference client.
    const client = await NbdClient.connect(s.uri())
    try {
      assert.equal((await client.read(16, 2n ** 54n)).toString('hex'), bytes)
    } finally {
      await client.close()
    }
  })
})
