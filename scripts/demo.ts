/**
 * `npm run demo`: the main job on an embedded default. Starts a local nbdkit memory export,
 * shows what `nbdts info` sees, writes and reads back through the client, prints the stats,
 * and tears everything down.
 */
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { NbdClient } from '../src/index.ts'

const dir = mkdtempSync(path.join(tmpdir(), 'nbdts-demo-'))
const socket = path.join(dir, 'nbdkit.sock')
const uri = `nbd+unix:///?socket=${socket}`
const step = (text: string): void => { process.stdout.write(`\n── ${text}\n`) }

step(`starting nbdkit: a 256 MiB memory export on ${socket}`)
const server = spawn('nbdkit', ['--exit-with-parent', '-f', '-U', socket, 'memory', '256M'], { stdio: 'inherit' })
try {
  for (let i = 0; i < 250 && !existsSync(socket); i++) await sleep(20)

  step(`nbdts info ${uri}`)
  const info = spawn(process.execPath, ['dist/cli/main.js', 'info', uri], { stdio: 'inherit' })
  await new Promise((resolve) => info.once('close', resolve))

  step('writing 64 MiB through the client, then reading it back')
  const client = await NbdClient.connect(uri, { maxInFlight: 32 })
  const message = Buffer.from('hello from nbdts\n')
  const block = Buffer.alloc(1 << 20)
  for (let i = 0; i < block.length; i += message.length) message.copy(block, i)
  const started = performance.now()
  await Promise.all(Array.from({ length: 64 }, (_, i) => client.write(block, i << 20)))
  await client.flush()
  const wrote = performance.now()
  const back = await client.read(0, 64 << 20)
  const read = performance.now()
  let intact = true
  for (let i = 0; i < 64; i++) intact &&= back.subarray(i << 20, (i + 1) << 20).equals(block)
  process.stdout.write(`wrote 64 MiB in ${(wrote - started).toFixed(0)} ms, read it back in ${(read - wrote).toFixed(0)} ms: ${intact ? 'every byte intact' : 'MISMATCH'}\n`)
  process.stdout.write(`first bytes: ${JSON.stringify(back.subarray(0, message.length).toString())}\n`)

  step('extents after the write (base:allocation)')
  for await (const e of client.map()) process.stdout.write(`${String(e.offset).padStart(12)} ${String(e.length).padStart(12)}  ${e.flags === 0 ? 'data' : 'hole,zero'}\n`)

  step('client stats')
  process.stdout.write(JSON.stringify(client.stats, null, 2) + '\n')
  await client.close()
  if (!intact) process.exitCode = 1
} finally {
  step('stopping nbdkit')
  server.kill()
  await new Promise((resolve) => server.once('exit', resolve))
  rmSync(dir, { recursive: true, force: true })
}
