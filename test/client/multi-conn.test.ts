/**
 * Several connections (CAN_MULTI_CONN): how many are opened, how requests spread over them,
 * and FLUSH as a barrier across all of them, as the spec's multi-conn rule needs (a FLUSH
 * covers the writes whose replies arrived before it was sent, on any connection).
 */
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { after, test } from 'node:test'
import { NbdClient } from '../../src/index.ts'
import { rejectsWithCode } from '../helpers/assert.ts'
import { startNbdkit, tempDir, type RunningServer } from '../helpers/servers.ts'

const dir = tempDir()
const servers: RunningServer[] = []
after(async () => { await Promise.all(servers.map((s) => s.stop('SIGKILL'))) })
async function nbdkit (args: string[], name: string): Promise<RunningServer> {
  const s = await startNbdkit(dir, args, name)
  servers.push(s)
  return s
}

const K64 = 64 * 1024

test("connections: 'auto' opens 4 where multi-conn is allowed, 1 where it is not; a number needs it", async () => {
  const multi = await nbdkit(['memory', '16M'], 'multi')
  const single = await nbdkit(['--filter=multi-conn', 'memory', '16M', 'multi-conn-mode=disable'], 'single')
  const a = await NbdClient.connect(multi.uri(), { connections: 'auto' })
  assert.equal(a.connections, 4)
  await a.close()
  const b = await NbdClient.connect(single.uri(), { connections: 'auto' })
  assert.equal(b.connections, 1)
  await b.close()
  await rejectsWithCode(NbdClient.connect(single.uri(), { connections: 4 }), 'NBD_ERR_NOT_SUPPORTED', 5000, /CAN_MULTI_CONN/)
})

test('light traffic stays on one connection; heavy traffic uses all of them; data agrees across them', async () => {
  const s = await nbdkit(['memory', '64M'], 'spread')
  const client = await NbdClient.connect(s.uri(), { connections: 4, maxInFlight: 16 })
  for (let i = 0; i < 20; i++) await client.read(4096, i * 4096)
  const light = client.connectionInfo().map((c) => c.stats.requests.read)
  assert.deepEqual(light, [20, 0, 0, 0], 'one request at a time: the first connection only')

  const blocks = Array.from({ length: 256 }, (_, i) => Buffer.alloc(K64, i + 1))
  await Promise.all(blocks.map((b, i) => client.write(b, i * K64)))
  const writes = client.connectionInfo().map((c) => c.stats.requests.write)
  assert.ok(writes.every((n) => n > 0), `256 writes at once use every connection: ${writes.join(', ')}`)
  // Read back over whichever connections: every block is what was written.
  const back = await Promise.all(blocks.map((_, i) => client.read(K64, i * K64)))
  back.forEach((b, i) => { assert.ok(b.equals(blocks[i]!), `block ${i}`) })
  await client.close()
})

test('FLUSH waits for every write in flight on any connection, and later writes wait for it', async () => {
  const log = path.join(dir, 'barrier.log')
  const s = await nbdkit(['--filter=log', 'memory', '64M', `logfile=${log}`], 'barrier')
  const client = await NbdClient.connect(s.uri(), { connections: 4, maxInFlight: 16 })
  const data = Buffer.alloc(K64, 7)
  const before = Array.from({ length: 64 }, (_, i) => client.write(data, i * K64))
  const flush = client.flush()
  const afterFlush = Array.from({ length: 64 }, (_, i) => client.write(data, (64 + i) * K64))
  await Promise.all([...before, flush, ...afterFlush])
  await client.close()

  const lines = readFileSync(log, 'utf8').split('\n')
  const flushSent = lines.findIndex((l) => / Flush id=/.test(l))
  const flushDone = lines.findIndex((l) => /\.\.\.Flush id=\d+ return=0/.test(l))
  assert.ok(flushSent > 0 && flushDone > flushSent)
  const offset = (l: string): number => parseInt(/offset=0x([0-9a-f]+)/.exec(l)![1]!, 16)
  const writeLines = lines.filter((l) => / Write id=/.test(l))
  const connections = new Set(writeLines.map((l) => /connection=(\d+)/.exec(l)![1]))
  assert.ok(connections.size > 1, 'the writes went over several connections')
  // Each write's reply line names only its id: map ids (per connection) to offsets first.
  const offsets = new Map<string, number>()
  for (const l of writeLines) {
    const [, conn, id] = /connection=(\d+) Write id=(\d+)/.exec(l)!
    offsets.set(`${conn}/${id}`, offset(l))
  }
  lines.forEach((l, at) => {
    const reply = /connection=(\d+) \.\.\.Write id=(\d+) return/.exec(l)
    if (reply !== null && offsets.get(`${reply[1]}/${reply[2]}`)! < 64 * K64) {
      assert.ok(at < flushSent, `a write before the flush was acknowledged before it was sent: ${l}`)
    }
    const sent = / Write id=/.test(l) ? offset(l) : -1
    if (sent >= 64 * K64) assert.ok(at > flushDone, `a write after the flush was sent after it completed: ${l}`)
  })
})
