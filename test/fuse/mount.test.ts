/**
 * The FUSE shim with the real kernel and real tools: fio with verification, a loop device with
 * ext4 on it, fallocate and SEEK_DATA/SEEK_HOLE, reconnect under load, read-only mounts,
 * byte-granular writes, directory mounts, stale mounts, interrupts and errors.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, openSync, closeSync, readFileSync, readdirSync, statSync, statfsSync, writeFileSync, writeSync } from 'node:fs'
import path from 'node:path'
import { after, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { within } from '../helpers/assert.ts'
import { nbdts } from '../helpers/cli.ts'
import { isMounted, mountExport } from '../helpers/mounts.ts'
import { run, startNbdkit, tempDir, type RunningServer } from '../helpers/servers.ts'

const dir = tempDir()
const stops: Array<() => Promise<void>> = []
after(async () => { for (const s of stops.reverse()) await s().catch(() => {}) })
const MiB = 1 << 20

async function server (name: string, args: string[]): Promise<RunningServer> {
  const s = await startNbdkit(dir, args, name)
  stops.push(() => s.stop('SIGKILL'))
  return s
}

async function mounted (uri: string, name: string, args: string[] = [], kind: 'file' | 'dir' = 'file'): ReturnType<typeof mountExport> {
  const m = await mountExport(dir, uri, name, args, kind)
  stops.push(() => m.unmount())
  return m
}

async function fio (args: string[], timeoutMs = 120_000): Promise<{ stdout: string }> {
  // verify_state_save=0: fio would leave a *-verify.state file in the working directory.
  const r = await run('fio', ['--output-format=normal', '--verify_state_save=0', ...args], { timeoutMs })
  return { stdout: r.stdout.toString() }
}

/** lseek(SEEK_DATA/SEEK_HOLE) from Python: Node has no lseek. Returns the data ranges. */
async function dataRanges (file: string): Promise<Array<[number, number]>> {
  const script = `
import os, sys, json
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
ranges, off = [], 0
while off < size:
    try:
        d = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:
        break
    h = os.lseek(fd, d, os.SEEK_HOLE)
    ranges.append([d, h])
    off = h
print(json.dumps(ranges))`
  const r = await run('python3', ['-c', script, file])
  return JSON.parse(r.stdout.toString()) as Array<[number, number]>
}

function logLines (file: string, verb: string): string[] {
  return readFileSync(file, 'utf8').split('\n').filter((l) => l.includes(` ${verb} id=`) && !l.includes(`...${verb}`))
}

describe('nbdts mount', () => {
  // The default reader (drained on the main thread) and the fallback (a reader thread, -o reader=thread).
  for (const reader of ['drain', 'thread'] as const) {
    test(`fio with crc32c verification: random writes then reads, 4 KiB to 1 MiB, iodepth 16 (${reader} reader)`, async () => {
      const s = await server(`fio-${reader}`, ['memory', '256M'])
      const m = await mounted(s.uri(), `fio-${reader}.img`, reader === 'thread' ? ['-o', 'reader=thread'] : [])
      assert.equal(statSync(m.file).size, 256 * MiB)
      assert.match(m.logText(), new RegExp(`, ${reader} reader\\)`))
      const r = await fio(['--name=verify', `--filename=${m.file}`, '--rw=randwrite', '--bsrange=4k-1m', '--ioengine=libaio',
        '--direct=1', '--iodepth=16', `--size=${reader === 'drain' ? 128 : 64}M`, '--verify=crc32c', '--do_verify=1', '--verify_fatal=1', '--randrepeat=0'])
      assert.match(r.stdout, /err= 0/)
      assert.doesNotMatch(r.stdout, /verify: bad/)
      // What the file shows is what the server holds.
      const { stdout } = await run('nbdcopy', [s.uri(), '-'])
      assert.ok(stdout.subarray(0, 128 * MiB).equals(readFileSync(m.file).subarray(0, 128 * MiB)))
      await m.unmount()
      assert.equal(isMounted(m.target), false)
      assert.equal(existsSync(`${m.target}.pid`), false, 'the pidfile goes with the daemon')
    })
  }

  test('losetup + mkfs.ext4 + mount + files + umount: e2fsck -fn is clean and nbdcopy sees what the file showed', async () => {
    const s = await server('ext4', ['memory', '256M'])
    const m = await mounted(s.uri(), 'ext4.img')
    const loop = (await run('losetup', ['-f', '--show', m.file])).stdout.toString().trim()
    const fsDir = path.join(dir, 'ext4mnt')
    mkdirSync(fsDir, { recursive: true })
    const files = new Map<string, Buffer>()
    try {
      await run('mkfs.ext4', ['-q', loop])
      await run('mount', [loop, fsDir])
      try {
        for (let i = 0; i < 20; i++) {
          const data = randomBytes(1 + Math.floor(Math.random() * 2 * MiB))
          files.set(`file${i}`, data)
          writeFileSync(path.join(fsDir, `file${i}`), data)
        }
        await run('sync', [])
      } finally {
        await run('umount', [fsDir])
      }
      await run('e2fsck', ['-fn', loop])
      // Mount again, read every file back.
      await run('mount', ['-o', 'ro', loop, fsDir])
      try {
        for (const [name, data] of files) assert.ok(readFileSync(path.join(fsDir, name)).equals(data), name)
      } finally {
        await run('umount', [fsDir])
      }
    } finally {
      await run('losetup', ['-d', loop])
    }
    const shown = readFileSync(m.file)
    const { stdout } = await run('nbdcopy', [s.uri(), '-'])
    assert.ok(stdout.equals(shown), 'the export equals what the file showed')
  })

  test('fallocate punch-hole → WRITE_ZEROES that may punch (never a bare TRIM), zero-range → WRITE_ZEROES NO_HOLE; both read back as zeroes', async () => {
    const log = path.join(dir, 'falloc.log')
    const s = await server('falloc', ['--filter=log', 'memory', '16M', `logfile=${log}`])
    const m = await mounted(s.uri(), 'falloc.img')
    const fd = openSync(m.file, 'r+')
    writeSync(fd, Buffer.alloc(4 * MiB, 0xab), 0, 4 * MiB, 0)
    closeSync(fd)
    await run('fallocate', ['--punch-hole', '--offset', '65536', '--length', String(MiB), m.file])
    await run('fallocate', ['--zero-range', '--offset', String(2 * MiB + 100), '--length', '5000', m.file])
    const back = readFileSync(m.file).subarray(0, 4 * MiB)
    const expected = Buffer.alloc(4 * MiB, 0xab)
    expected.fill(0, 65536, 65536 + MiB)
    expected.fill(0, 2 * MiB + 100, 2 * MiB + 5100)
    assert.ok(back.equals(expected))
    await m.unmount()
    assert.deepEqual(logLines(log, 'Trim'), [], 'TRIM promises no zeroes, so a punch never becomes one')
    const zeroes = logLines(log, 'Zero').join('\n')
    assert.match(zeroes, /offset=0x10000 count=0x100000 trim=1/)
    assert.match(zeroes, /offset=0x200064 count=0x1388 trim=0/)
  })

  test('SEEK_DATA/SEEK_HOLE and st_blocks match the map of a sparse export', async () => {
    const s = await server('sparse', ['sparse-random', '64M', 'seed=7', 'percent=30', 'runlength=1048576'])
    const m = await mounted(s.uri(), 'sparse.img', ['--readonly'])
    const map = JSON.parse((await run('nbdinfo', ['--map', '--json', s.uri()])).stdout.toString()) as Array<{ offset: number, length: number, type: number }>
    const data: Array<[number, number]> = []
    for (const e of map) {
      if ((e.type & 3) === 3) continue
      const last = data[data.length - 1]
      if (last !== undefined && last[1] === e.offset) last[1] += e.length
      else data.push([e.offset, e.offset + e.length])
    }
    assert.ok(data.length > 3, 'the export is sparse')
    assert.deepEqual(await dataRanges(m.file), data)
    const allocated = data.reduce((n, [a, b]) => n + b - a, 0)
    assert.equal(statSync(m.file).blocks, allocated / 512)
  })

  test('the server killed mid-load and restarted within the reconnect delay: fio verify passes', async () => {
    const image = path.join(dir, 'reconnect.img')
    writeFileSync(image, Buffer.alloc(0))
    await run('truncate', ['-s', '64M', image])
    const s = await server('reconnect', ['file', image])
    const m = await mounted(s.uri(), 'reconnect.img.mnt', ['--reconnect-delay', '20s'])
    const load = fio(['--name=verify', `--filename=${m.file}`, '--rw=randwrite', '--bsrange=4k-256k', '--ioengine=libaio',
      '--direct=1', '--iodepth=16', '--size=64M', '--verify=crc32c', '--do_verify=1', '--verify_fatal=1', '--loops=30'])
    let finished = false
    void load.then(() => { finished = true }, () => { finished = true })
    await sleep(700)
    assert.equal(finished, false, 'the load is still running when the server dies')
    await s.stop('SIGKILL')
    await sleep(1500)
    await s.restart()
    const r = await within(load, 120_000, 'fio')
    assert.match(r.stdout, /err= 0/)
    assert.match(m.logText(), /CONNECTING_WAIT → CONNECTED/)
  })

  test('the server killed for good: I/O gets EIO after the delay, and SIGTERM still unmounts cleanly', async () => {
    const s = await server('gone', ['memory', '16M'])
    const m = await mounted(s.uri(), 'gone.img', ['--reconnect-delay', '2s'])
    await s.stop('SIGKILL')
    const started = Date.now()
    const dd = await run('dd', [`if=${m.file}`, 'of=/dev/null', 'bs=4096', 'count=1', 'iflag=direct']).then(() => 'ok', (err: Error) => err.message)
    const waited = Date.now() - started
    assert.match(dd, /Input\/output error/)
    assert.ok(waited >= 1500 && waited < 6000, `EIO after ${waited} ms`)
    process.kill(m.pid, 'SIGTERM')
    for (let i = 0; i < 250 && isMounted(m.target); i++) await sleep(20)
    assert.equal(isMounted(m.target), false, 'unmounted after SIGTERM')
    assert.match(m.logText(), /shutting down: SIGTERM/)
  })

  test('read-only mounts refuse writes; byte writes at odd offsets land (server minimum block 4096)', async () => {
    const s = await server('bs', ['--filter=blocksize-policy', 'memory', '8M', 'blocksize-minimum=4096',
      'blocksize-preferred=4096', 'blocksize-maximum=1M', 'blocksize-error-policy=error'])
    const ro = await mounted(s.uri(), 'ro.img', ['--readonly'])
    assert.equal(statSync(ro.file).mode & 0o777, 0o400, 'the default mode 0600 without its write bit')
    assert.throws(() => openSync(ro.file, 'r+'), /EROFS/)
    await ro.unmount()

    const rw = await mounted(s.uri(), 'rw.img')
    const fd = openSync(rw.file, 'r+')
    const offsets = [1, 4095, 4097, 8191, 12345, 8 * MiB - 1]
    for (const [i, at] of offsets.entries()) writeSync(fd, Buffer.from([i + 1]), 0, 1, at)
    closeSync(fd)
    const { stdout } = await run('nbdcopy', [s.uri(), '-'])
    for (const [i, at] of offsets.entries()) assert.equal(stdout[at], i + 1, `byte at ${at}`)
    assert.equal(stdout.subarray(0, 8 * MiB).reduce((n, b) => n + (b === 0 ? 0 : 1), 0), offsets.length, 'nothing else changed')
  })

  test('cp writes 1 MiB at a time (st_blksize is max_write) and root\'s mount reads ahead 4 MiB; -o blksize= and readahead= change them', async () => {
    const log = path.join(dir, 'blksize.log')
    const s = await server('blksize', ['--filter=log', 'memory', '8M', `logfile=${log}`])
    const m = await mounted(s.uri(), 'blksize.img')
    const bdi = async (file: string): Promise<number> => {
      const device = (await run('mountpoint', ['-d', file])).stdout.toString().trim()
      return Number(readFileSync(`/sys/class/bdi/${device}/read_ahead_kb`, 'utf8'))
    }
    assert.equal(statSync(m.file).blksize, MiB)
    assert.equal(await bdi(m.file), 4096)
    const source = path.join(dir, 'blksize-source.img')
    writeFileSync(source, randomBytes(8 * MiB))
    await run('cp', [source, m.file])
    const writes = logLines(log, 'Write')
    assert.equal(writes.length, 8, `cp sent 8 writes of 1 MiB:\n${writes.join('\n')}`)
    for (const w of writes) assert.match(w, /count=0x100000 /)
    assert.deepEqual(readFileSync(m.file), readFileSync(source))
    await m.unmount()

    const small = await mounted(s.uri(), 'blksize-small.img', ['-o', 'blksize=65536,readahead=512'])
    assert.equal(statSync(small.file).blksize, 65536)
    assert.equal(await bdi(small.file), 512)
  })

  test('a directory mount shows the export as DIR/NAME', async () => {
    const s = await server('dirmode', ['pattern', '4M'])
    const m = await mounted(s.uri(), 'dirmode', ['--name', 'export.raw'], 'dir')
    assert.deepEqual(readdirSync(m.target), ['export.raw'])
    assert.equal(m.file, path.join(m.target, 'export.raw'))
    const st = statSync(m.file)
    assert.equal(st.size, 4 * MiB)
    assert.equal(statSync(m.target).blksize, 4096, 'the directory keeps the page size')
    const head = readFileSync(m.file).subarray(0, 16)
    assert.equal(head.readBigUInt64BE(8), 8n, 'pattern data reads through')
    assert.equal(existsSync(path.join(m.target, 'nbd')), false)
  })

  test('ENOSPC and EROFS reach the writer; a file that does not exist is refused', async () => {
    const full = await server('full', ['full', '1M'])
    const m = await mounted(full.uri(), 'full.img')
    const dd = await run('dd', ['if=/dev/zero', `of=${m.file}`, 'bs=4096', 'count=1', 'oflag=direct', 'conv=notrunc']).then(() => 'ok', (err: Error) => err.message)
    assert.match(dd, /No space left on device/)
    const missing = await nbdts(['mount', full.uri(), path.join(dir, 'no-such-file')])
    assert.equal(missing.code, 1)
    assert.match(missing.stderr, /does not exist/)
  })

  test('a stale mount from a crashed run is cleaned with a clear message; umount works', async () => {
    const s = await server('stale', ['memory', '4M'])
    const m = await mounted(s.uri(), 'stale.img')
    process.kill(m.pid, 'SIGKILL')
    await sleep(200)
    assert.throws(() => statfsSync(m.target), /ENOTCONN/)
    const again = await nbdts(['mount', s.uri(), m.target, '--log-file', path.join(dir, 'stale2.log')])
    assert.equal(again.code, 0, again.stderr)
    assert.match(again.stderr, /stale nbdts mount left by a crashed earlier run; cleaning it up/)
    assert.equal(statSync(m.target).size, 4 * MiB)
    const u = await nbdts(['umount', m.target])
    assert.equal(u.code, 0, u.stderr)
    assert.equal(isMounted(m.target), false)
    const notMounted = await nbdts(['umount', m.target])
    assert.equal(notMounted.code, 1)
    assert.match(notMounted.stderr, /is not an nbdts mount/)
  })

  test('a signal to a process waiting on a slow server interrupts its NBD request', async () => {
    // The kernel interrupts synchronous requests (fallocate, fsync, lseek); reads and direct
    // I/O go out as background requests, which it never interrupts.
    const s = await server('slow', ['--filter=delay', 'memory', '4M', 'delay-zero=3'])
    const m = await mounted(s.uri(), 'slow.img')
    const started = Date.now()
    const waiting = spawn('fallocate', ['--zero-range', '--offset', '0', '--length', '65536', m.file], { stdio: 'ignore' })
    await sleep(500)
    waiting.kill('SIGINT')
    await new Promise((resolve) => waiting.once('exit', resolve))
    assert.ok(Date.now() - started < 2500, 'the process did not wait for the slow server')
    await m.unmount()
    assert.match(m.logText(), /"interrupted":1/)
  })
})
