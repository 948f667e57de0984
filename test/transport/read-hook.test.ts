/**
 * The socket reads into buffers of ours (read-hook.ts). Node installs the next one only when a
 * read callback returns cleanly; an exception in that tick (any code's nextTick that throws,
 * an unhandled rejection) once left the socket reading into the previous buffer while we read
 * from the next: silently wrong bytes. Runs in a child process, where uncaught exceptions are
 * the script's to count, not the test runner's.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { after, test } from 'node:test'
import { within } from '../helpers/assert.ts'
import { startNbdkit, tempDir, type RunningServer } from '../helpers/servers.ts'

const dir = tempDir()
const servers: RunningServer[] = []
after(async () => { await Promise.all(servers.map((s) => s.stop('SIGKILL'))) })

test('exceptions thrown in other code\'s ticks while replies arrive never corrupt what is read', async () => {
  const server = await startNbdkit(dir, ['pattern', '64M'], 'pattern')
  servers.push(server)
  const script = path.join(dir, 'ticks.mts')
  writeFileSync(script, `
    import { NbdClient } from ${JSON.stringify(path.resolve('src/index.ts'))}
    let thrown = 0
    process.on('uncaughtException', () => { thrown++ })
    const client = await NbdClient.connect(process.argv[2], { maxInFlight: 8 })
    let bad = 0
    let error
    const noise = setInterval(() => { for (let i = 0; i < 4; i++) process.nextTick(() => { throw new Error('not ours') }) }, 1)
    try {
      for (let round = 0; round < 4; round++) {
        await Promise.all(Array.from({ length: 64 }, async (_, i) => {
          const offset = i * 1048576
          const size = [4096, 65536, 1048576][(i + round) % 3]
          const buf = await client.read(size, offset)
          for (let at = 0; at < size; at += 8) if (buf.readBigUInt64BE(at) !== BigInt(offset + at)) { bad++; break }
        }))
      }
    } catch (err) {
      error = String(err)
    }
    clearInterval(noise)
    client.destroy()
    process.send(JSON.stringify({ bad, thrown, error }))
  `)
  const child = spawn(process.execPath, ['--import', 'tsx', script, server.uri()], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const message = await within(new Promise<string>((resolve, reject) => {
    child.once('message', (m: string) => { resolve(m) })
    child.once('exit', (code) => { reject(new Error(`the script exited (${code}) before answering`)) })
  }), 30_000)
  const { bad, thrown, error } = JSON.parse(message) as { bad: number, thrown: number, error?: string }
  assert.ok(thrown > 0, 'the noise ran')
  assert.equal(error, undefined, 'no read failed')
  assert.equal(bad, 0, 'every read holds its own bytes')
})
