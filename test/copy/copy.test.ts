/**
 * `nbdts copy` between every kind of endpoint, checked by the bytes (cmp against nbdcopy's
 * read-back) and by the sparseness (`du` of a file, `nbdinfo --map` of an export); progress,
 * errors and exit codes, Ctrl-C, and a server restart in the middle of a copy.
 *
 * The source image: 24 MiB, data at [1M, 3M) and [9M, 9M+64K), an allocated run of zero bytes
 * at [4M, 6M) (only zero detection finds it), the rest never written (holes).
 */
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, existsSync, ftruncateSync, openSync, readFileSync, statSync, writeFileSync, writeSync } from 'node:fs'
import path from 'node:path'
import { after, before, describe, test } from 'node:test'
import { within } from '../helpers/assert.ts'
import { BIN, TEST_CODE_CACHE } from '../helpers/cli.ts'
import { run, startNbdkit, tempDir, type RunningServer } from '../helpers/servers.ts'
import { makePsk } from '../helpers/tls-keys.ts'

const dir = tempDir()
const M = 1 << 20
const SIZE = 24 * M
const image = Buffer.alloc(SIZE)
const imageFile = path.join(dir, 'image.raw')
let src: RunningServer

interface Result { code: number | null, signal: NodeJS.Signals | null, stdout: Buffer, stderr: string }

/** nbdts (the bin, as npm installs it: copy runs from the bundle) with stdin from `input` and stdout kept as bytes. */
function nbdts (args: string[], options: { input?: Buffer, timeoutMs?: number, onStderr?: (text: string, pid: number) => void } = {}): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, XDG_CACHE_HOME: TEST_CODE_CACHE } })
    const out: Buffer[] = []
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => out.push(d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; options.onStderr?.(stderr, child.pid!) })
    const timer = setTimeout(() => { child.kill('SIGKILL') }, options.timeoutMs ?? 60_000)
    child.on('error', reject)
    child.on('close', (code, signal) => { clearTimeout(timer); resolve({ code, signal, stdout: Buffer.concat(out), stderr }) })
    child.stdin.on('error', () => {})
    child.stdin.end(options.input)
  })
}

async function ok (args: string[], input?: Buffer): Promise<Result> {
  const r = await nbdts(args, input === undefined ? {} : { input })
  assert.equal(r.code, 0, `nbdts ${args.join(' ')}: ${r.stderr}`)
  return r
}

/** What nbdcopy reads from an export. */
async function readBack (uri: string): Promise<Buffer> {
  return (await run('nbdcopy', [uri, '-'], { timeoutMs: 60_000 })).stdout
}

/** Bytes the export's base:allocation calls holes. */
async function holeBytes (uri: string): Promise<number> {
  const map = JSON.parse((await run('nbdinfo', ['--map', '--json', uri])).stdout.toString()) as Array<{ length: number, type: number }>
  return map.filter((e) => (e.type & 1) !== 0).reduce((n, e) => n + e.length, 0)
}

/** KiB the file occupies on disk. */
function du (file: string): number {
  return Number(spawnSync('du', ['-k', file], { encoding: 'utf8' }).stdout.split('\t')[0])
}

before(async () => {
  randomBytes(2 * M).copy(image, M)
  randomBytes(64 * 1024).copy(image, 9 * M)
  // The file has the zero run allocated (written), so only zero detection sees it.
  writeFileSync(imageFile, Buffer.alloc(0))
  const fd = openSync(imageFile, 'r+')
  ftruncateSync(fd, SIZE)
  writeSync(fd, image.subarray(M, 3 * M), 0, 2 * M, M)
  writeSync(fd, Buffer.alloc(2 * M), 0, 2 * M, 4 * M)
  writeSync(fd, image.subarray(9 * M, 9 * M + 64 * 1024), 0, 64 * 1024, 9 * M)
  closeSync(fd)
  src = await startNbdkit(dir, ['memory', String(SIZE)], 'src')
  await run('nbdcopy', [imageFile, src.uri()])
})
after(async () => { await src.stop() })

describe('nbdts copy', () => {
  test('NBD → file: the bytes, and a sparse file (du), holes and zero runs not written', async () => {
    const out = path.join(dir, 'out.img')
    await ok(['copy', src.uri(), out])
    assert.ok(readFileSync(out).equals(image))
    assert.equal(statSync(out).size, SIZE)
    assert.ok(du(out) <= 2 * 1024 + 64 + 256, `the file holds only the data: ${du(out)} KiB`)
    // nbdcopy agrees.
    assert.ok((await readBack(src.uri())).equals(image))
  })

  test('file → NBD and NBD → NBD (4 connections each way): the bytes, and holes in the target (nbdinfo --map)', async () => {
    const dst = await startNbdkit(dir, ['memory', String(SIZE)], 'dst-nn')
    try {
      // Old data everywhere: zero runs must be zeroed, not skipped.
      await run('bash', ['-c', `head -c ${SIZE} /dev/zero | tr '\\0' 'w' | nbdcopy - '${dst.uri()}'`])
      const fromFile = await ok(['copy', '-v', imageFile, dst.uri()])
      assert.match(fromFile.stderr, /connections 1\/4/)
      assert.ok((await readBack(dst.uri())).equals(image))
      assert.ok(await holeBytes(dst.uri()) >= 20 * M, 'zero runs (the allocated one too) are holes')

      await run('bash', ['-c', `head -c ${SIZE} /dev/zero | tr '\\0' 'w' | nbdcopy - '${dst.uri()}'`])
      const fromNbd = await ok(['copy', '-v', '--flush', src.uri(), dst.uri()])
      assert.match(fromNbd.stderr, /connections 4\/4/)
      assert.ok((await readBack(dst.uri())).equals(image))
      assert.ok(await holeBytes(dst.uri()) >= 20 * M)
    } finally {
      await dst.stop()
    }
  })

  test('--allocated writes zeroes allocated; --destination-is-zero skips zero runs', async () => {
    const out = path.join(dir, 'allocated.img')
    await ok(['copy', '--allocated', src.uri(), out])
    assert.ok(readFileSync(out).equals(image))
    assert.ok(du(out) >= 24 * 1024 - 64, `fully allocated: ${du(out)} KiB`)

    const dst = await startNbdkit(dir, ['memory', String(SIZE)], 'dst-z')
    try {
      await run('bash', ['-c', `head -c ${SIZE} /dev/zero | tr '\\0' 'w' | nbdcopy - '${dst.uri()}'`])
      await ok(['copy', '--destination-is-zero', src.uri(), dst.uri()])
      const back = await readBack(dst.uri())
      assert.ok(back.subarray(M, 3 * M).equals(image.subarray(M, 3 * M)))
      assert.equal(back[0], 'w'.charCodeAt(0), 'the zero run was not written: we said it already was zero')
    } finally {
      await dst.stop()
    }
  })

  test('stdin → NBD and NBD → stdout, [ CMD ] at either end, null:', async () => {
    const dst = await startNbdkit(dir, ['memory', String(SIZE)], 'dst-p')
    try {
      await ok(['copy', '-', dst.uri()], image)
      assert.ok((await readBack(dst.uri())).equals(image))
      const out = await ok(['copy', dst.uri(), '-'])
      assert.ok(out.stdout.equals(image))
    } finally {
      await dst.stop()
    }
    // A server run as a child, with its own flags inside the brackets: qemu-nbd as the source,
    // nbdkit's file plugin as the destination (the file shows what it got).
    const qcow = path.join(dir, 'image.qcow2')
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', imageFile, qcow])
    const target = path.join(dir, 'target.img')
    writeFileSync(target, Buffer.alloc(0))
    await run('truncate', ['-s', String(SIZE), target])
    await ok(['copy', '[', 'qemu-nbd', '-r', '-f', 'qcow2', qcow, ']', '[', 'nbdkit', 'file', target, ']'])
    assert.ok(readFileSync(target).equals(image))
    const stdinToFile = path.join(dir, 'stdin.img')
    await ok(['copy', '-', stdinToFile], image)
    assert.ok(readFileSync(stdinToFile).equals(image), 'trailing zeroes from a pipe are kept (the file is sized at EOF)')
    await ok(['copy', src.uri(), 'null:'])
    // null: keeps nothing, so nothing is searched for zero blocks: without extents every byte
    // counts as data (to a file the same copy finds the zero blocks and leaves holes).
    const discarded = await ok(['copy', '-v', '--no-extents', src.uri(), 'null:'])
    assert.match(discarded.stderr, /\(24\.0 MiB data, 0\.0 MiB zero\)/)
    const kept = await ok(['copy', '-v', '--no-extents', src.uri(), path.join(dir, 'no-extents.img')])
    assert.match(kept.stderr, /\(2\.1 MiB data, 21\.9 MiB zero\)/)
  })

  test('a URI on the command line may name local files, as nbdcopy\'s may: TLS with tls-psk-file', async () => {
    const psk = makePsk(path.join(dir, 'psk'))
    const tls = await startNbdkit(dir, ['--tls=require', `--tls-psk=${psk}`, 'memory', String(SIZE)], 'tls-copy')
    try {
      const uri = `nbds+unix://alice@/?socket=${tls.socket}&tls-psk-file=${psk}`
      await ok(['copy', '-', uri], image)
      const out = await ok(['copy', uri, '-'])
      assert.ok(out.stdout.equals(image))
    } finally {
      await tls.stop()
    }
  })

  test('a block device (a loop device over a file): written and read back', async () => {
    const backing = path.join(dir, 'loop.img')
    writeFileSync(backing, Buffer.alloc(0))
    await run('truncate', ['-s', String(SIZE), backing])
    const device = (await run('losetup', ['-f', '--show', backing])).stdout.toString().trim()
    try {
      await ok(['copy', src.uri(), device])
      const back = path.join(dir, 'from-device.img')
      await ok(['copy', device, back])
      assert.ok(readFileSync(back).equals(image))
    } finally {
      await run('losetup', ['-d', device])
    }
  })

  test('--json progress lines (also to --progress=FD; --progress=json still works), --progress=FD "N/100" lines, -p without a value', async () => {
    for (const args of [['--json'], ['--json', '--progress=2'], ['--progress=json']]) {
      const json = await ok(['copy', ...args, src.uri(), 'null:'])
      const lines = json.stderr.trim().split('\n').map((l) => JSON.parse(l) as { bytes: number, total: number, done: boolean, rate: number })
      assert.deepEqual({ ...lines.at(-1), rate: 0, elapsed: 0, eta: 0 }, { bytes: SIZE, total: SIZE, percent: 100, done: true, rate: 0, elapsed: 0, eta: 0 }, args.join(' '))
    }
    const fd = await ok(['copy', '--progress=2', src.uri(), 'null:'])
    assert.match(fd.stderr, /^0\/100\n(\d+\/100\n)*100\/100\n$/)
    // -p takes no value: SRC stays SRC.
    const bare = await ok(['copy', '-p', src.uri(), 'null:'])
    assert.match(bare.stderr, /100\/100\n$/)
  })

  test('errors like nbdcopy\'s: one line naming the end and what failed, exit 1; usage errors exit 2', async () => {
    const small = await startNbdkit(dir, ['memory', String(M)], 'small')
    const failing = await startNbdkit(dir, ['--filter=error', 'memory', String(SIZE), 'error-pread=EIO', 'error-pread-rate=100%'], 'failing')
    try {
      const smaller = await nbdts(['copy', src.uri(), small.uri()])
      assert.equal(smaller.code, 1)
      assert.match(smaller.stderr, /^nbdts: nbd\+unix:.*small\.sock: the destination \(1048576 bytes\) is smaller than the source \(25165824 bytes\)\n$/)
      const eio = await nbdts(['copy', '--no-extents', failing.uri(), 'null:'])
      assert.equal(eio.code, 1)
      assert.match(eio.stderr, /^nbdts: nbd\+unix:.*failing\.sock: read at \d+\+262144: .*EIO/m)
      const missing = await nbdts(['copy', path.join(dir, 'nope'), 'null:'])
      assert.equal(missing.code, 1)
      assert.match(missing.stderr, /nope: no such file/)
      assert.equal((await nbdts(['copy', 'null:', path.join(dir, 'x')])).code, 1)
      const fd = await nbdts(['copy', '--progress=99', src.uri(), 'null:'])
      assert.equal(fd.code, 1)
      assert.match(fd.stderr, /progress file descriptor 99 is not open/)
      const usage = await nbdts(['copy', '--request-size', '1000', src.uri(), 'null:'])
      assert.equal(usage.code, 2)
      assert.match(usage.stderr, /power of two/)
    } finally {
      await Promise.all([small.stop(), failing.stop()])
    }
  })

  test('Ctrl-C: in-flight requests settle, exit 130, the server started for [ CMD ] is gone', async () => {
    let serverPid = 0
    let signalled = false
    const r = await nbdts(['copy', '--progress=json', '-R', '2', '[', 'nbdkit', '--filter=delay', 'pattern', '64M', 'delay-read=200ms', ']', 'null:'], {
      onStderr: (text, pid) => {
        if (signalled || !text.includes('"bytes"')) return
        const children = spawnSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' }).stdout.trim().split('\n').filter((l) => l !== '')
        if (children.length === 0) return
        serverPid = Number(children[0])
        signalled = true
        process.kill(pid, 'SIGINT')
      }
    })
    assert.ok(signalled)
    assert.equal(r.code, 130, r.stderr)
    assert.match(r.stderr, /copy interrupted by SIGINT/)
    assert.ok(serverPid > 0)
    assert.equal(existsSync(`/proc/${serverPid}`), false, 'the server we started has stopped')
  })

  test('a large copy survives a server restart in the middle, and the result is right', async () => {
    const backing = path.join(dir, 'restart-src.img')
    writeFileSync(backing, readFileSync(imageFile))
    // Slow reads, so the copy is still running when the server goes away.
    const slow = await startNbdkit(dir, ['--filter=delay', 'file', backing, 'delay-read=150ms'], 'slow')
    const out = path.join(dir, 'restarted.img')
    let restarted: Promise<void> | undefined
    try {
      const r = await within(nbdts(['copy', '-v', '--progress=json', '--no-extents', '-C', '1', '-R', '1', '--request-size', '1M', '--reconnect-delay', '30s', slow.uri(), out], {
        timeoutMs: 90_000,
        onStderr: (text) => {
          if (restarted !== undefined) return
          const last = text.trim().split('\n').at(-1) ?? ''
          if (!/"bytes":[1-9]/.test(last)) return
          restarted = (async () => {
            await slow.stop('SIGKILL')
            await new Promise((resolve) => setTimeout(resolve, 300))
            await slow.restart()
          })()
        }
      }), 90_000, 'the copy across a restart')
      assert.ok(restarted !== undefined, 'the server was restarted during the copy')
      await restarted
      assert.equal(r.code, 0, r.stderr)
      assert.match(r.stderr, /, [1-9]\d* reconnect\(s\), /)
      assert.ok(readFileSync(out).equals(image))
    } finally {
      await restarted?.catch(() => {})
      await slow.stop()
    }
  })
})
