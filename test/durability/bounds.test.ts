/**
 * Defect 6: a replay the server never finishes (the restarted server delays every write for
 * 1000 s) must not hold other requests without bound, with one connection or two: a write to an
 * unrelated range, a read and a FLUSH settle (a rejection is fine) within
 * reconnectDelay + requestTimeout + slack.
 */
import assert from 'node:assert/strict'
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

describe('a replay that never finishes', () => {
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
      const read = handled(settled(client.read(4 * KiB, 6 * MiB)))
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
})
