/**
 * Defect 7: ledger growth. After one plain write, 150,000 FUA writes (each cuts the ledger,
 * none adds to it) leave the client responsive: the replay at the next reconnect does not
 * block the event loop (max delay < 1 s, perf_hooks' monitor) on a real nbdkit (the memory
 * plugin advertises FLUSH and FUA).
 */
import assert from 'node:assert/strict'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { describe, test } from 'node:test'
import { NbdClient } from '../../src/index.ts'
import { within } from '../helpers/assert.ts'
import { durabilityScene, KiB, pattern } from './scene.ts'

const scene = durabilityScene()

describe('ledger growth', () => {
  test('one plain write, then 150,000 FUA writes: the next reconnect\'s replay does not block the event loop', async (t) => {
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
    // The histogram may take no sample in a short window: the largest gap between 5 ms ticks too.
    let last = performance.now()
    let maxGap = 0
    const ticker = setInterval(() => {
      const now = performance.now()
      maxGap = Math.max(maxGap, now - last)
      last = now
    }, 5)
    const r0 = performance.now()
    client.reconnect()
    await within(client.flush(), 20_000, 'the FLUSH after the reconnect')
    const back = await client.read(4 * KiB, 0)
    const elapsed = performance.now() - r0
    clearInterval(ticker)
    maxGap = Math.max(maxGap, performance.now() - last)
    h.disable()
    const maxMs = Math.max(h.max / 1e6, maxGap)
    t.diagnostic(`reconnect + FLUSH in ${Math.round(elapsed)} ms; max event-loop delay ${maxMs.toFixed(1)} ms; reconnects ${client.stats().reconnects}`)
    assert.ok(back.equals(pattern(1, 4 * KiB)), 'the plain write reads back')
    assert.ok(client.stats().reconnects >= 1, 'it did reconnect')
    assert.ok(maxMs < 1000, `the event loop was never blocked for a second (max ${maxMs.toFixed(1)} ms)`)
  })
})
