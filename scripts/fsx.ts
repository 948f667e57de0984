/**
 * `npm run fsx`: our file exerciser (test/helpers/fsx.ts) for longer runs than the suite's.
 * Without --file it starts nbdkit (memory, or the plugin words after --server) on a private
 * Unix socket, mounts it with the built CLI, runs, unmounts and stops what it started.
 *
 *   npm run fsx -- --ops 200000 --seed 42
 *   npm run fsx -- --ops 50000 --size 64M --server 'memory 64M allocator=zstd'
 *   npm run fsx -- --ops 10000 '--server=--filter=blocksize-policy memory 8M blocksize-minimum=4096
 *     blocksize-maximum=262144 blocksize-error-policy=error'    # rejects unaligned and large requests
 *   npm run fsx -- --file /mnt/disk.img --ops 10000      # an existing mount (its data is lost)
 *
 * A mismatch prints the seed, the operation, the first differing offset and the last
 * operations, and exits 1; `--seed S` replays it.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { FsxMismatch, runFsx } from '../test/helpers/fsx.ts'

const { values } = parseArgs({
  options: {
    ops: { type: 'string', default: '100000' },
    seed: { type: 'string' },
    size: { type: 'string', default: '16M' },
    file: { type: 'string' },
    server: { type: 'string' },
    'no-trunc': { type: 'boolean', default: false }
  }
})

function bytes (text: string): number {
  const m = /^(\d+)([KMG]?)$/i.exec(text)
  if (m === null) throw new Error(`--size ${text}: give bytes, or a number with K, M or G`)
  return Number(m[1]) * 1024 ** ' KMG'.indexOf((m[2] ?? '').toUpperCase() || ' ')
}

const ops = Number(values.ops)
if (!Number.isSafeInteger(ops) || ops <= 0) throw new Error(`--ops ${values.ops}: give a positive whole number`)
const seed = values.seed !== undefined ? Number(values.seed) : Math.floor(Math.random() * 2 ** 31)
if (!Number.isSafeInteger(seed)) throw new Error(`--seed ${values.seed}: give a whole number`)
const cli = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url))
const cleanups: Array<() => Promise<void> | void> = []

async function mountOwn (): Promise<{ file: string, size: number }> {
  const size = bytes(values.size)
  const dir = mkdtempSync(path.join(tmpdir(), 'nbdts-fsx-'))
  cleanups.push(() => { rmSync(dir, { recursive: true, force: true }) })
  const socket = path.join(dir, 'nbdkit.sock')
  const plugin = values.server?.split(/\s+/) ?? ['memory', String(size)]
  const server: ChildProcess = spawn('nbdkit', ['--exit-with-parent', '-f', '-U', socket, ...plugin], { stdio: 'inherit' })
  server.once('error', (err) => { process.stderr.write(`nbdkit: ${err.message}\n`) })
  cleanups.push(() => { server.kill('SIGTERM') })
  for (let i = 0; i < 250 && !existsSync(socket); i++) await sleep(20)
  const file = path.join(dir, 'fsx.img')
  writeFileSync(file, '')
  const log = path.join(dir, 'nbdts.log')
  const mounted = spawnSync(process.execPath, [cli, 'mount', `nbd+unix:///?socket=${socket}`, file, '--log-file', log, '--pidfile', path.join(dir, 'nbdts.pid')], { encoding: 'utf8' })
  if (mounted.status !== 0) throw new Error(`nbdts mount failed: ${mounted.stderr}${existsSync(log) ? readFileSync(log, 'utf8') : ''}`)
  cleanups.unshift(() => { spawnSync(process.execPath, [cli, 'umount', file], { stdio: 'inherit' }) })
  return { file, size: statSync(file).size }
}

let code = 0
try {
  const { file, size } = values.file !== undefined ? { file: values.file, size: statSync(values.file).size } : await mountOwn()
  process.stdout.write(`fsx: seed ${seed}, ${ops} operations on ${file} (${size} bytes)\n`)
  const started = Date.now()
  const result = runFsx({
    file, size, ops, seed, noTrunc: values['no-trunc'],
    progressEvery: 10_000,
    progress: (done) => { process.stdout.write(`  ${done} operations, ${Math.round((Date.now() - started) / 1000)} s\n`) }
  })
  process.stdout.write(`fsx: seed ${seed}: ${ops} operations agree with the model in ${Math.round((Date.now() - started) / 1000)} s ${JSON.stringify(result.counts)}\n`)
} catch (err) {
  code = 1
  process.stderr.write(`${err instanceof FsxMismatch ? err.message : (err as Error).stack ?? String(err)}\n`)
  process.stderr.write(`fsx: seed ${seed} (replay with --seed ${seed})\n`)
} finally {
  for (const c of cleanups) await c()
}
process.exitCode = code
