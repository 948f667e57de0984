/**
 * Defects 4 and 5, with two connections (the file plugin under nbdkit's cache filter
 * advertises multi-conn): connections lost in quick succession while writes go on.
 *
 *  4. kill -9 / restart cycles in quick succession, writes and read-backs between.
 *  5. Connections lost one at a time while a replay may be running on the other: reads fail
 *     with ESHUTDOWN now and then (the client drains that connection only, and replays), plus
 *     kill -9 / restarts; every write waits a little in the server so that replays take a while.
 *
 * Invariants, not timings: no write fails (reconnectDelay is long); a read never returns
 * anything but the last acknowledged write of its block; after the final FLUSH the image file
 * (read after the server is killed again) holds every acknowledged write.
 */
import assert from 'node:assert/strict'
import { randomInt } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { NbdClient } from '../../src/index.ts'
import { handled, within } from '../helpers/assert.ts'
import type { RunningServer } from '../helpers/servers.ts'
import { durabilityScene, KiB, MiB, pattern, QUICK_BACKOFF, volatileFile } from './scene.ts'

const scene = durabilityScene()
const BLOCK = 4 * KiB
const WORKERS = 8
/** Blocks per worker: few, so that blocks are written again while older writes are unflushed. */
const BLOCKS = 16
const SIZE = 4 * MiB

interface LoadResult {
  writes: number
  reads: number
  failures: string[]
  stale: string[]
}

/**
 * Each worker owns BLOCKS blocks and writes tagged 4 KiB blocks in them, reading one back now
 * and then; `model` gets a write only once acknowledged.
 */
function load (client: NbdClient, model: Buffer, until: () => boolean): Promise<LoadResult> {
  const result: LoadResult = { writes: 0, reads: 0, failures: [], stale: [] }
  let tag = 1
  return Promise.all(Array.from({ length: WORKERS }, async (_, w) => {
    while (!until()) {
      const offset = (w * BLOCKS + randomInt(BLOCKS)) * BLOCK
      const data = pattern(tag++, BLOCK)
      try {
        await client.write(data, offset)
      } catch (err) {
        result.failures.push(`write at ${offset}: ${(err as Error).message}`)
        return
      }
      data.copy(model, offset)
      result.writes++
      if (randomInt(3) === 0) {
        const at = (w * BLOCKS + randomInt(BLOCKS)) * BLOCK
        try {
          const back = await client.read(BLOCK, at)
          result.reads++
          if (!back.equals(model.subarray(at, at + BLOCK))) result.stale.push(`read at ${at} after ${result.writes} writes`)
        } catch (err) {
          result.failures.push(`read at ${at}: ${(err as Error).message}`)
          return
        }
      }
    }
  })).then(() => result)
}

/** kill -9 and restart `cycles` times: up `upMs`–2·`upMs`, down 20–150 ms. */
async function crashes (server: RunningServer, cycles: number, upMs: number): Promise<void> {
  for (let i = 0; i < cycles; i++) {
    await sleep(upMs + randomInt(upMs))
    await server.stop('SIGKILL')
    await sleep(20 + randomInt(130))
    await server.restart()
  }
}

/** The last FLUSH, then the image file as the server left it on disk. */
async function finalImage (client: NbdClient, server: RunningServer, image: string, model: Buffer): Promise<void> {
  await within(client.flush(), 20_000, 'the final FLUSH')
  const back = await within(client.read(SIZE, 0), 20_000, 'the final read')
  const wrongInClient = firstWrongBlock(back, model)
  await client.close()
  await server.stop('SIGKILL')
  const wrongOnDisk = firstWrongBlock(readFileSync(image), model)
  assert.equal(wrongInClient, -1, `after the final FLUSH the client reads every acknowledged write (block ${wrongInClient} is not)`)
  assert.equal(wrongOnDisk, -1, `after the final FLUSH the image holds every acknowledged write (block ${wrongOnDisk} does not)`)
}

function firstWrongBlock (image: Buffer, model: Buffer): number {
  for (let b = 0; b * BLOCK < model.length; b++) {
    const at = b * BLOCK
    if (!image.subarray(at, at + BLOCK).equals(model.subarray(at, at + BLOCK))) return b
  }
  return -1
}

describe('multi-conn: connections lost in quick succession under writes', () => {
  // The default back-off (1 s doubling, ±20%) leaves one connection reconnected and the other
  // still waiting when the next crash comes: the stale one then comes back first, its loss
  // dating from a crash before the last replay.
  for (const backoff of ['default', 'quick'] as const) {
    test(`defect 4: eight kill -9 / restart cycles in quick succession (${backoff} back-off); nothing stale, nothing lost`, async (t) => {
      const image = scene.image(`loop-${backoff}.img`, SIZE)
      const server = await scene.nbdkit(`loop-${backoff}`, volatileFile(image))
      const client = scene.client(await NbdClient.connect(server.uri(), {
        connections: 2, reconnectDelay: 20_000, ...(backoff === 'quick' && { backoff: QUICK_BACKOFF })
      }))
      assert.equal(client.connections, 2)
      const model = Buffer.alloc(SIZE)
      let stop = false
      const running = handled(load(client, model, () => stop))
      await crashes(server, 8, backoff === 'quick' ? 150 : 700)
      await sleep(300)
      stop = true
      const result = await within(running, 30_000, 'the load')
      t.diagnostic(`${result.writes} writes, ${result.reads} reads, ${client.stats().reconnects} reconnects`)
      assert.deepEqual(result.failures, [], 'no request failed')
      assert.deepEqual(result.stale, [], 'no read returned anything but the last acknowledged write')
      assert.ok(result.writes > 100, `the load ran (${result.writes} writes)`)
      await finalImage(client, server, image, model)
    })
  }

  test('defect 5: single connections lost (ESHUTDOWN) while replays run, and kill -9s; nothing stale, nothing lost', async (t) => {
    const image = scene.image('overlap.img', SIZE)
    // ESHUTDOWN on some reads drains just that connection; the delay keeps each replay on the
    // wire for a while, so the other connection is often lost while one runs.
    const server = await scene.nbdkit('overlap', volatileFile(image, ['error', 'delay'], ['error-pread=ESHUTDOWN', 'error-pread-rate=10%', 'delay-write=30ms']))
    const client = scene.client(await NbdClient.connect(server.uri(), { connections: 2, reconnectDelay: 20_000, backoff: QUICK_BACKOFF }))
    assert.equal(client.connections, 2)
    const model = Buffer.alloc(SIZE)
    let stop = false
    const running = handled(load(client, model, () => stop))
    await crashes(server, 4, 800)
    await sleep(1500)
    stop = true
    const result = await within(running, 30_000, 'the load')
    t.diagnostic(`${result.writes} writes, ${result.reads} reads, ${client.stats().reconnects} reconnects`)
    assert.deepEqual(result.failures, [], 'no request failed')
    assert.deepEqual(result.stale, [], 'no read returned anything but the last acknowledged write')
    assert.ok(result.writes > 100, `the load ran (${result.writes} writes)`)
    await finalImage(client, server, image, model)
  })
})
