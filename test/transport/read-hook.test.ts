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
import type { Socket } from 'node:net'
import { after, test } from 'node:test'
import { NbdClient } from '../../src/index.ts'
import { ReadHook } from '../../src/transport/read-hook.ts'
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
    const noise = setInterval(() => {
      for (let i = 0; i < 4; i++) process.nextTick(() => { throw new Error('not ours') })
      void Promise.reject(new Error('not ours either'))
    }, 1)
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

/**
 * Each useUserBuffer() call leaves a native listener object on the socket until it closes
 * (Node 20), so the hook hands buffers over by returning them from the read callback and calls
 * it only off the read path: never per read.
 */
test('the socket is given buffers without a useUserBuffer() call per read', async () => {
  const server = await startNbdkit(dir, ['memory', '64M'], 'memory')
  servers.push(server)
  const sockets: Socket[] = []
  const register = ReadHook.register
  ReadHook.register = (socket, hook) => { sockets.push(socket); register.call(ReadHook, socket, hook) }
  let client: NbdClient
  try {
    client = await NbdClient.connect(server.uri(), { maxInFlight: 16 })
  } finally {
    ReadHook.register = register
  }
  const handle = (sockets[0] as unknown as { _handle: { useUserBuffer: (buf: Uint8Array) => void } })._handle
  const install = handle.useUserBuffer
  let calls = 0
  handle.useUserBuffer = function (buf) { calls++; install.call(this, buf) }
  const reads = async (count: number, size: number): Promise<void> => {
    await Promise.all(Array.from({ length: 16 }, async (_, w) => {
      for (let i = w; i < count; i += 16) await client.read(size, (i % 64) * size % (64 * 1048576))
    }))
  }
  for (let phase = 0; phase < 3; phase++) {
    await reads(2000, 4096)
    await reads(64, 1048576)
  }
  // At most one per time large READs came to be in flight (a smaller read size for headers).
  assert.ok(calls <= 3, `${calls} useUserBuffer() calls for 6,192 READs`)
  await client.close()
})
