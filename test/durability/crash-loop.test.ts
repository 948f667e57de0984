/**
 * Defect 4: a multi-conn crash loop. Two connections; the server is killed (-9) and restarted
 * again and again with writes between. Each restarted server lets one client in at a time
 * (nbdkit's limit filter), so one connection is back and the other still out when the next
 * crash comes; which one gets into the next server is up to their back-off. A connection
 * that comes back after missing a restart must not take requests before the writes the server
 * lost are written again: after every successful FLUSH the image file holds every
 * acknowledged write, and reads never return anything older.
 */
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { NbdClient } from '../../src/index.ts'
import { within } from '../helpers/assert.ts'
import { durabilityScene, KiB, MiB, pattern, QUICK_BACKOFF, volatileFile } from './scene.ts'

const scene = durabilityScene()
const CYCLES = 8
const BATCH = 8
const LEN = 8 * KiB
const SIZE = 4 * MiB

function firstWrong (image: Buffer, model: Buffer): number {
  for (let at = 0; at < model.length; at += LEN) {
    if (!image.subarray(at, at + LEN).equals(model.subarray(at, at + LEN))) return at
  }
  return -1
}

async function someConnected (client: NbdClient): Promise<void> {
  const deadline = Date.now() + 15_000
  while (!client.states().includes('CONNECTED')) {
    if (Date.now() > deadline) throw new Error(`no connection back within 15 s: ${client.states().join(', ')}`)
    await sleep(5)
  }
}

describe('multi-conn crash loop', () => {
  test(`${CYCLES} kill -9 / restarts letting one connection in at a time: every successful FLUSH vouches only for what the image holds`, async (t) => {
    const image = scene.image('loop.img', SIZE)
    const first = await scene.nbdkit('loop', volatileFile(image))
    const client = scene.client(await NbdClient.connect(first.uri(), { connections: 2, reconnectDelay: 15_000, backoff: QUICK_BACKOFF }))
    assert.equal(client.connections, 2)
    const model = Buffer.alloc(SIZE)
    let tag = 1
    const batch = async (cycle: number): Promise<void> => {
      // Blocks rewritten from cycle to cycle (so older records are replaced) and new ones.
      await Promise.all(Array.from({ length: BATCH }, async (_, i) => {
        const at = ((cycle * 3 + i) % 64) * LEN
        const data = pattern(tag++, LEN)
        await client.write(data, at)
        data.copy(model, at)
      }))
    }
    await batch(0)
    let server = first
    const flushes: string[] = []
    for (let cycle = 1; cycle <= CYCLES; cycle++) {
      await server.stop('SIGKILL')
      // Both connections retry meanwhile, so their back-offs even out; then one gets in.
      await sleep(300)
      server = await scene.nbdkit('loop', volatileFile(image, ['limit'], ['limit=1']))
      // A FLUSH as soon as a connection is back (sent on a connected one: the other may stay
      // out for the whole cycle): it must not vouch for writes the dead server lost.
      await someConnected(client)
      await within(client.flush(), 20_000, `the FLUSH of cycle ${cycle}`)
      const wrong = firstWrong(readFileSync(image), model)
      flushes.push(client.states().join('/'))
      assert.equal(wrong, -1, `cycle ${cycle}: the FLUSH succeeded but the image lacks the acknowledged write at ${wrong} (states ${flushes.join(', ')})`)
      const back = await within(client.read(64 * LEN, 0), 20_000, 'a read-back')
      assert.equal(firstWrong(back, model.subarray(0, 64 * LEN)), -1, `cycle ${cycle}: a read returned stale data`)
      await batch(cycle)
    }
    t.diagnostic(`connection states at each FLUSH: ${flushes.join(', ')}`)
    await server.stop('SIGKILL')
    server = await scene.nbdkit('loop', volatileFile(image))
    await within(client.flush(), 20_000, 'the final FLUSH')
    await client.close()
    await server.stop('SIGKILL')
    assert.equal(firstWrong(readFileSync(image), model), -1, 'after the final FLUSH the image holds every acknowledged write')
  })
})
