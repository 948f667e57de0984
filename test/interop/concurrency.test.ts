/**
 * 10,000 mixed requests at 64 in flight against nbdkit with delays that reorder replies:
 * every reply must reach its own caller, and every byte must end up where it was written.
 */
import assert from 'node:assert/strict'
import { randomBytes, randomInt } from 'node:crypto'
import { after, test } from 'node:test'
import { NbdClient } from '../../src/index.ts'
import { within } from '../helpers/assert.ts'
import { run, startNbdkit, tempDir } from '../helpers/servers.ts'

const dir = tempDir()
const stops: Array<() => Promise<void>> = []
after(async () => { await Promise.all(stops.map((s) => s())) })

test('10,000 mixed requests at 64 in flight, out of order, data verified', async () => {
  const server = await startNbdkit(dir, ['--filter=delay', 'memory', '64M', 'delay-read=2ms', 'delay-write=1ms', 'delay-zero=3ms'], 'delay')
  stops.push(() => server.stop())
  const client = await NbdClient.connect(server.uri(), { maxInFlight: 64 })
  const workers = 64
  const region = (64 << 20) / workers
  const model = Buffer.alloc(64 << 20)
  let remaining = 10_000
  let reads = 0
  // Each worker owns one region, so the model is exact; the engine sees 64 interleaved streams.
  await within(Promise.all(Array.from({ length: workers }, async (_, w) => {
    const base = w * region
    while (remaining-- > 0) {
      const offset = base + randomInt(region - 70_000)
      const length = 1 + randomInt(65_536)
      const op = randomInt(100)
      if (op < 45) {
        const got = await client.read(length, offset)
        assert.ok(got.equals(model.subarray(offset, offset + length)), `read ${offset}+${length}`)
        reads++
      } else if (op < 85) {
        const data = randomBytes(length)
        await client.write(data, offset, { fua: op % 7 === 0 })
        data.copy(model, offset)
      } else if (op < 95) {
        await client.writeZeroes(length, offset)
        model.fill(0, offset, offset + length)
      } else {
        await client.flush()
      }
    }
  })), 240_000, '10,000 requests')
  assert.ok(reads > 3000)
  const { stdout } = await run('nbdcopy', [server.uri(), '-'])
  assert.ok(stdout.equals(model), 'the image holds exactly what was written')
  assert.equal(client.stats().inFlight, 0)
  await client.close()
})
