/**
 * Defect 3: with two connections (nbdkit's file plugin under the cache filter advertises
 * multi-conn), the server fails every write for a moment after its restart, so the first
 * replay fails. No FLUSH may succeed while acknowledged writes are missing from the server:
 * once one succeeds, every acknowledged write must be in the image file (checked after the
 * server is killed again, so only what reached the file counts).
 */
import assert from 'node:assert/strict'
import { readFileSync, rmSync, writeFileSync } from 'node:fs'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { NbdClient } from '../../src/index.ts'
import { handled, within } from '../helpers/assert.ts'
import { connected, durabilityScene, KiB, MiB, pattern, QUICK_BACKOFF, volatileFile } from './scene.ts'

const scene = durabilityScene()
const WRITES = 32
const LEN = 16 * KiB
/** Spread out, so that every write is its own cache block and its own piece of the replay. */
const STRIDE = 128 * KiB

async function settles (p: Promise<unknown>): Promise<string> {
  try {
    await p
    return 'ok'
  } catch (err) {
    return `${(err as { code?: string }).code ?? 'error'}: ${(err as Error).message}`
  }
}

describe('multi-conn: the first replay after a restart fails', () => {
  for (const when of ['before', 'after'] as const) {
    test(`a FLUSH called ${when} the server accepts writes again succeeds only with every acknowledged write in the image`, async (t) => {
      const image = scene.image(`fail-${when}.img`, 8 * MiB)
      const inject = scene.file(`fail-${when}.inject`)
      const name = `fail-${when}`
      // Each write waits 200 ms (delay, outermost) before the error filter looks for the file:
      // a replay that meets EIO takes that long, long enough for the other connection to come
      // back while it runs.
      const args = volatileFile(image, ['delay', 'error'], ['delay-write=200ms', 'error-pwrite=EIO', 'error-pwrite-rate=100%', `error-pwrite-file=${inject}`])
      const server = await scene.nbdkit(name, args)
      const client = scene.client(await NbdClient.connect(server.uri(), { connections: 2, reconnectDelay: 15_000, backoff: QUICK_BACKOFF }))
      assert.equal(client.connections, 2)
      const expected = Buffer.alloc(8 * MiB)
      await Promise.all(Array.from({ length: WRITES }, async (_, i) => {
        const data = pattern(100 + i, LEN)
        await client.write(data, i * STRIDE)
        data.copy(expected, i * STRIDE)
      }))
      // Writes fail from the restart on, until the file goes.
      writeFileSync(inject, '')
      await server.stop('SIGKILL')
      await server.restart()
      let early: Promise<void> | undefined
      if (when === 'before') early = handled(client.flush())
      // Both connections back (an engine that counts the failed replay as a failed connect may
      // not be: the writes go back on after 3 s anyway), then the replay meets EIO for 500 ms more.
      await connected(client, 3000).catch(() => {})
      await sleep(500)
      rmSync(inject)
      const results: string[] = []
      if (early !== undefined) results.push(await settles(within(early, 20_000, 'the early FLUSH')))
      // Then FLUSH until one succeeds (a reconnect-delay error or DURABILITY may come first).
      const deadline = Date.now() + 20_000
      while (results.at(-1) !== 'ok' && Date.now() < deadline) {
        results.push(await settles(within(client.flush(), 20_000, 'a FLUSH')))
        if (results.at(-1) !== 'ok') await sleep(100)
      }
      t.diagnostic(`FLUSH results: ${results.join(' | ')}`)
      const vouched = results.includes('ok')
      await client.close()
      await server.stop('SIGKILL')
      if (!vouched) {
        assert.ok(results.some((r) => r.startsWith('NBD_ERR_DURABILITY')), `no FLUSH succeeded, and none said why: ${results.join(' | ')}`)
        return
      }
      const disk = readFileSync(image)
      const missing: number[] = []
      for (let i = 0; i < WRITES; i++) {
        const at = i * STRIDE
        if (!disk.subarray(at, at + LEN).equals(expected.subarray(at, at + LEN))) missing.push(i)
      }
      assert.deepEqual(missing, [], `a FLUSH succeeded (${results.join(' | ')}) but these acknowledged writes are not in the image`)
    })
  }
})
