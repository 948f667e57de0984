/**
 * Defects 6 and 7: bounds.
 *
 *  6. A replay the server never finishes (the restarted server delays every write for 1000 s)
 *     must not hold other requests without bound: a write to an unrelated range, a read and a
 *     FLUSH settle (a rejection is fine) within reconnectDelay + requestTimeout + slack.
 *  7. After one plain write, 150,000 FUA writes leave the client responsive: the replay at the
 *     next reconnect does not block the event loop (max delay < 1 s) on a real nbdkit.
 */
import assert from 'node:assert/strict'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { describe, test } from 'node:test'
import { NbdClient } from '../../src/index.ts'
import { handled, within } from '../helpers/assert.ts'
import { durabilityScene, KiB, MiB, pattern, QUICK_BACKOFF, volatileFile } from './scene.ts'

const scene = durabilityScene()

async function settled (p: Promise<unknown>): Promise<{ ms: number, result: string }> {
  const t0 = performance.now()
  try {
    await p
    return { ms: performance.now() - t0, result: 'ok' }
  } catch (err) {
    return { ms: performance.now() - t0, result: (err as { code?: string }).code ?? (err as Error).message }
  }
}

describe('bounds', () => {
  for (const connections of [1, 2]) {
  test(`defect 6 (${connections} connection${connections > 1 ? 's' : ''}): a replay the server never finishes holds a write elsewhere, a read and a FLUSH no longer than reconnectDelay + requestTimeout`, async (t) => {
    const image = scene.image(`hang${connections}.img`, 8 * MiB)
    const RECONNECT_DELAY = 2000
    const REQUEST_TIMEOUT = 3000
    const SLACK = 2000
    const server = await scene.nbdkit(`hang${connections}`, volatileFile(image))
    const client = scene.client(await NbdClient.connect(server.uri(), {
      connections, reconnectDelay: RECONNECT_DELAY, requestTimeout: REQUEST_TIMEOUT, backoff: QUICK_BACKOFF
    }))
    await client.write(pattern(1, 64 * KiB), 0)
    await server.stop('SIGKILL')
    // The same socket; every write (the replay's too) now waits 1000 s in the server.
    const hung = await scene.nbdkit(`hang${connections}`, volatileFile(image, ['delay'], ['delay-write=1000']))
    const started = performance.now()
    const write = handled(settled(client.write(pattern(2, 4 * KiB), 4 * MiB)))
    const read = handled(settled(client.read(6 * MiB, 4 * KiB)))
    const flush = handled(settled(client.flush()))
    const bound = RECONNECT_DELAY + REQUEST_TIMEOUT + SLACK
    const results = await within(Promise.all([write, read, flush]), bound + 5000, 'the write, read and FLUSH')
    const total = performance.now() - started
    t.diagnostic(`write ${results[0].result} after ${Math.round(results[0].ms)} ms; read ${results[1].result} after ${Math.round(results[1].ms)} ms; flush ${results[2].result} after ${Math.round(results[2].ms)} ms`)
    assert.ok(total < bound, `all three settled within ${bound} ms of the restart (took ${Math.round(total)} ms)`)
    assert.notEqual(results[2].result, 'ok', 'the FLUSH cannot vouch for the write the server never took back')
    await client.close()
    await hung.stop('SIGKILL')
  })
  }

  test('defect 7: one plain write, then 150,000 FUA writes: the next reconnect\'s replay does not block the event loop', async (t) => {
    const server = await scene.nbdkit('fua', ['memory', '256M'])
    // A reconnect delay, so that requests made while it reconnects wait for it instead of failing.
    const client = scene.client(await NbdClient.connect(server.uri(), { maxInFlight: 64, reconnectDelay: 10_000 }))
    assert.ok(client.canFlush && client.canFua, 'the memory plugin advertises FLUSH and FUA')
    await client.write(pattern(1, 4 * KiB), 0)
    const FUA_WRITES = 150_000
    const block = Buffer.alloc(512, 7)
    const t0 = performance.now()
    let next = 0
    await Promise.all(Array.from({ length: 64 }, async () => {
      while (next < FUA_WRITES) {
        // Spread over the export, clear of the plain write at 0.
        const i = next++
        await client.write(block, 64 * KiB + (i % 200_000) * 1024, { fua: true })
      }
    }))
    t.diagnostic(`${FUA_WRITES} FUA writes in ${Math.round(performance.now() - t0)} ms`)
    const h = monitorEventLoopDelay({ resolution: 10 })
    h.enable()
    const r0 = performance.now()
    client.reconnect()
    await within(client.flush(), 20_000, 'the FLUSH after the reconnect')
    const back = await client.read(0, 4 * KiB)
    h.disable()
    const maxMs = h.max / 1e6
    t.diagnostic(`reconnect + FLUSH in ${Math.round(performance.now() - r0)} ms; max event-loop delay ${maxMs.toFixed(1)} ms; reconnects ${client.stats.reconnects}`)
    assert.ok(back.equals(pattern(1, 4 * KiB)), 'the plain write reads back')
    assert.ok(client.stats.reconnects >= 1, 'it did reconnect')
    assert.ok(maxMs < 1000, `the event loop was never blocked for a second (max ${maxMs.toFixed(1)} ms)`)
  })
})
