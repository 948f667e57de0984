/**
 * What the mounted file promises, as a file: O_TRUNC opens zero the export and the size stays; punched
 * and zeroed ranges read back as zeroes on a server whose TRIM does nothing (also through a
 * loop device's discard); fallocate past the end is clamped; the directory refuses new
 * entries with EACCES; an interrupted write never overtakes a later one to the same range.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { closeSync, mkdirSync, openSync, readFileSync, readSync, renameSync, rmSync, statSync, unlinkSync, writeFileSync, writeSync } from 'node:fs'
import path from 'node:path'
import { after, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
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

async function mounted (uri: string, name: string, args: string[] = [], kind: 'file' | 'dir' = 'file'): Promise<TestMount> {
  const m = await mountExport(dir, uri, name, args, kind)
  stops.push(() => m.unmount())
  return m
}

function readAt (file: string, offset: number, length: number): Buffer {
  const fd = openSync(file, 'r')
  try {
    const b = Buffer.alloc(length)
    assert.equal(readSync(fd, b, 0, length, offset), length)
    return b
  } finally {
    closeSync(fd)
  }
}

function fill (file: string, length: number, byte: number): void {
  const fd = openSync(file, 'r+')
  writeSync(fd, Buffer.alloc(length, byte), 0, length, 0)
  closeSync(fd)
}

const failure = (p: Promise<unknown>): Promise<string> => p.then(() => 'ok', (err: Error) => err.message)

describe('the mounted file', () => {
  test('O_TRUNC opens (echo >, cp, dd without notrunc) zero the export, write from the start, and the size stays', async () => {
    const s = await server('trunc', ['memory', '16M'])
    const m = await mounted(s.uri(), 'trunc.img')
    fill(m.file, 16 * MiB, 0xee)
    await run('sh', ['-c', `echo hello > ${m.file}`])
    assert.equal(readAt(m.file, 0, 6).toString(), 'hello\n')
    assert.equal(statSync(m.file).size, 16 * MiB)
    assert.ok(readAt(m.file, 6, 16 * MiB - 6).equals(Buffer.alloc(16 * MiB - 6)), 'after O_TRUNC the rest reads as zeroes')
    const image = path.join(dir, 'small.img')
    writeFileSync(image, Buffer.alloc(8192, 0x5c))
    await run('cp', [image, m.file])
    assert.ok(readAt(m.file, 0, 8192).equals(Buffer.alloc(8192, 0x5c)), 'cp wrote the image')
    // dd without conv=notrunc truncates too: one block written, the block cp wrote after it is gone.
    await run('dd', [`if=${image}`, `of=${m.file}`, 'bs=4096', 'count=1', 'seek=0', 'status=none'])
    const expected = Buffer.concat([Buffer.alloc(4096, 0x5c), Buffer.alloc(4096)])
    assert.ok(readAt(m.file, 0, 8192).equals(expected), 'dd\'s block, then zeroes')
    assert.equal(statSync(m.file).size, 16 * MiB, 'the export keeps its size')
    const { stdout } = await run('nbdcopy', [s.uri(), '-'])
    assert.ok(stdout.subarray(0, 8192).equals(expected), 'the server has it')
  })

  test('fallocate past the end is clamped as for a regular file; only growing fails (ENOSPC)', async () => {
    const s = await server('clamp', ['memory', '4M'])
    const m = await mounted(s.uri(), 'clamp.img')
    const size = 4 * MiB
    fill(m.file, size, 0xee)
    const fallocate = (args: string[]): Promise<string> => failure(run('fallocate', [...args, m.file]))
    assert.equal(await fallocate(['--punch-hole', '--offset', String(size - 4096), '--length', String(MiB)]), 'ok')
    assert.equal(await fallocate(['--zero-range', '--keep-size', '--offset', String(size - 8192), '--length', String(MiB)]), 'ok')
    assert.equal(await fallocate(['--punch-hole', '--offset', String(size + 4096), '--length', '4096']), 'ok', 'wholly past the end: nothing to do')
    assert.ok(readAt(m.file, size - 8192, 8192).equals(Buffer.alloc(8192)), 'the part inside was zeroed')
    assert.ok(readAt(m.file, size - 12288, 4096).equals(Buffer.alloc(4096, 0xee)), 'and nothing before it')
    assert.match(await fallocate(['--zero-range', '--offset', String(size - 4096), '--length', String(MiB)]), /No space left on device/)
    assert.match(await fallocate(['--offset', '0', '--length', String(2 * size)]), /No space left on device/)
    assert.equal(await fallocate(['--keep-size', '--offset', '0', '--length', String(2 * size)]), 'ok')
  })

  test('a directory mount refuses new entries, removal and renames with EACCES', async () => {
    const s = await server('dir', ['memory', '1M'])
    const m = await mounted(s.uri(), 'dirmount', [], 'dir')
    assert.throws(() => { writeFileSync(path.join(m.target, 'new'), 'x') }, /EACCES/)
    assert.throws(() => { mkdirSync(path.join(m.target, 'sub')) }, /EACCES/)
    assert.throws(() => { unlinkSync(m.file) }, /EACCES/)
    assert.throws(() => { renameSync(m.file, path.join(m.target, 'other')) }, /EACCES/)
    assert.match(await failure(run('mknod', [path.join(m.target, 'fifo'), 'p'])), /Permission denied/)
    assert.equal(statSync(m.file).size, MiB)
    assert.equal(m.file, path.join(m.target, 'nbd'), 'the default name is nbdfuse\'s')
    assert.equal(statSync(m.target).mode & 0o777, 0o500, 'r-x for those who may use the file (mode 0600)')
  })

  test('punched and zeroed ranges read back as zeroes on servers whose TRIM does nothing, also through a loop device', async () => {
    const disk = path.join(dir, 'notrim.disk')
    writeFileSync(disk, Buffer.alloc(0))
    await run('truncate', ['-s', '16M', disk])
    // TRIM accepted and ignored, as the spec allows; WRITE_ZEROES offered (emulated by nbdkit).
    const eval_ = ['eval', 'get_size=echo 16M', `pread=dd if=${disk} skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none`,
      `pwrite=dd of=${disk} seek=$4 conv=notrunc oflag=seek_bytes status=none`, 'trim=exit 0']
    for (const [name, args] of [['notrim', eval_], ['notrim-nozero', ['--filter=nozero', ...eval_, 'zeromode=none']]] as const) {
      const s = await server(name, [...args])
      const m = await mounted(s.uri(), `${name}.img`)
      fill(m.file, 4 * MiB, 0xab)
      await run('fallocate', ['--punch-hole', '--offset', '65536', '--length', '16384', m.file])
      await run('fallocate', ['--zero-range', '--offset', '131072', '--length', '5000', m.file])
      assert.ok(readAt(m.file, 65536 - 4096, 16384 + 8192).equals(Buffer.concat([Buffer.alloc(4096, 0xab), Buffer.alloc(16384), Buffer.alloc(4096, 0xab)])), `${name}: punched`)
      assert.ok(readAt(m.file, 131072, 5001).equals(Buffer.concat([Buffer.alloc(5000), Buffer.alloc(1, 0xab)])), `${name}: zeroed`)
      if (name === 'notrim') {
        // A loop device discards with PUNCH_HOLE, and so does fallocate on the block device.
        const loop = (await run('losetup', ['-f', '--show', m.file])).stdout.toString().trim()
        try {
          await run('blkdiscard', ['--offset', String(MiB), '--length', '65536', loop])
          await run('fallocate', ['--punch-hole', '--offset', String(2 * MiB), '--length', '65536', loop])
          const { stdout } = await run('dd', [`if=${loop}`, 'bs=65536', 'count=48', 'iflag=direct', 'status=none'])
          assert.ok(stdout.subarray(MiB, MiB + 65536).equals(Buffer.alloc(65536)), 'blkdiscard on the loop device: zeroes')
          assert.ok(stdout.subarray(2 * MiB, 2 * MiB + 65536).equals(Buffer.alloc(65536)), 'fallocate -p on the loop device: zeroes')
          assert.ok(stdout.subarray(MiB + 65536, 2 * MiB).equals(Buffer.alloc(MiB - 65536, 0xab)), 'nothing else')
        } finally {
          await run('losetup', ['-d', loop])
        }
      }
      await m.unmount()
    }
  })

  // The FUSE side aborts the interrupted WRITE's signal and answers EINTR at once; the client
  // keeps the aborted write ordered until its life on the wire ends.
  test('a later write to the same offset wins over an interrupted one still on the wire', async () => {
    const log = path.join(dir, 'order.log')
    const s = await server('order', ['--filter=log', '--filter=delay', 'memory', '4M', 'delay-write=2', `logfile=${log}`])
    const m = await mounted(s.uri(), 'order.img')
    const first = path.join(dir, 'first.bin')
    const second = path.join(dir, 'second.bin')
    writeFileSync(first, Buffer.alloc(4096, 0x11))
    writeFileSync(second, Buffer.alloc(4096, 0x22))
    const writes = (): string[] => readFileSync(log, 'utf8').split('\n').filter((l) => / (\.\.\.)?Write id=/.test(l))
    // A buffered write is a synchronous FUSE WRITE, which the kernel interrupts when the writer
    // gets a signal; killed, the writer waits for our EINTR, not for the server.
    const a = spawn('dd', [`if=${first}`, `of=${m.file}`, 'bs=4096', 'count=1', 'conv=notrunc', 'status=none'], { stdio: 'ignore' })
    const aExit = new Promise((resolve) => a.once('exit', resolve))
    for (let i = 0; i < 250 && writes().length === 0; i++) await sleep(20)
    assert.equal(writes().length, 1, 'the first write is at the server')
    a.kill('SIGKILL')
    await aExit
    await run('dd', [`if=${second}`, `of=${m.file}`, 'bs=4096', 'count=1', 'conv=notrunc', 'status=none'])
    const { stdout } = await run('nbdcopy', [s.uri(), '-'])
    assert.ok(stdout.subarray(0, 4096).equals(Buffer.alloc(4096, 0x22)), 'the later write is what the server holds')
    await m.unmount()
    assert.match(m.logText(), /"interrupted":1/)
    // The rule: the second write is sent only once the first one's life on the wire is over.
    const lines = writes()
    const firstDone = lines.findIndex((l) => l.includes('...Write id='))
    const secondSent = lines.findIndex((l, i) => i > 0 && !l.includes('...Write id='))
    assert.ok(firstDone >= 0 && secondSent > firstDone, `the second write was sent before the first one finished:\n${lines.join('\n')}`)
    rmSync(log, { force: true })
  })
})
