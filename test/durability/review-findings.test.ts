/**
 * What a review of the new engine found, now regression tests (they failed before the fixes):
 *
 * A 1 MiB write with a 64 KiB ledger (borrowed: its caller waits for a FLUSH), reconnectDelay 0,
 * the server killed while that FLUSH is on the wire and restarted at once. The write resolves
 * (its data is dropped from the ledger after three quick background FLUSH failures, though the
 * caller's buffer was still there to replay), and of three FLUSHes called together after that,
 * only one fails with NBD_ERR_DURABILITY: the others succeed although the write is not on disk.
 * WriteLedger says "every FLUSH called after one of them was acknowledged fails ... until one
 * such FLUSH has": these were all called before any had.
 *
 * A server that comes back but refuses the replay for good (every write EIO: say it came back
 * read-only or full) wedges the client: it is CONNECTED, yet every request, reads included,
 * fails with NBD_ERR_RECONNECT_DELAY at once, forever, and no FLUSH ever says
 * NBD_ERR_DURABILITY: the replay is retried without end and its writes never declared lost.
 */
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { NbdClient } from '../../src/index.ts'
import { handled, within } from '../helpers/assert.ts'
import { connected, durabilityScene, KiB, MiB, pattern, QUICK_BACKOFF, volatileFile } from './scene.ts'

const scene = durabilityScene()

async function outcome (p: Promise<unknown>): Promise<string> {
  try {
    await p
    return 'ok'
  } catch (err) {
    return (err as { code?: string }).code ?? (err as Error).message
  }
}

describe('findings', () => {
  test('a lost write: every FLUSH called after it resolved, before any reported the loss, must fail (or the data be on disk)', async (t) => {
    const image = scene.image('concurrent.img', 8 * MiB)
    const slowBack = ['--filter=cache', '--filter=delay', 'file', image, 'cache=writeback', 'delay-write=1000ms']
    const server = await scene.nbdkit('concurrent', slowBack)
    const client = scene.client(await NbdClient.connect(server.uri(), { replayLog: 64 * KiB, reconnectDelay: 0, requestTimeout: 20_000, backoff: QUICK_BACKOFF }))
    const data = pattern(7, MiB)
    const write = handled(client.write(data, 2 * MiB))
    await sleep(500)
    await server.stop('SIGKILL')
    const again = await scene.nbdkit('concurrent', ['--filter=cache', 'file', image, 'cache=writeback'])
    const wrote = await outcome(within(write, 20_000, 'the write'))
    await connected(client)
    const flushes = await Promise.all([0, 1, 2].map(() => handled(outcome(client.flush()))))
    t.diagnostic(`write ${wrote}; FLUSHes ${flushes.join(', ')}`)
    await client.close()
    await again.stop('SIGKILL')
    const onDisk = readFileSync(image).subarray(2 * MiB, 3 * MiB).equals(data)
    if (wrote === 'ok' && !onDisk) {
      assert.deepEqual(flushes, ['NBD_ERR_DURABILITY', 'NBD_ERR_DURABILITY', 'NBD_ERR_DURABILITY'], 'the write resolved but is not on disk: no FLUSH called after it may succeed')
    }
  })

  test('a replay the server refuses for good: reads go on once the bound has passed, and a FLUSH says DURABILITY', async (t) => {
    const image = scene.image('refused.img', 8 * MiB)
    const server = await scene.nbdkit('refused', volatileFile(image))
    const client = scene.client(await NbdClient.connect(server.uri(), { reconnectDelay: 2000, requestTimeout: 3000, backoff: QUICK_BACKOFF }))
    await client.write(pattern(1, 64 * KiB), 0)
    await server.stop('SIGKILL')
    const again = await scene.nbdkit('refused', volatileFile(image, ['error'], ['error-pwrite=EIO', 'error-pwrite-rate=100%']))
    await connected(client)
    await sleep(4000)
    const read = await outcome(client.read(4 * KiB, MiB))
    const flush = await outcome(client.flush())
    t.diagnostic(`states ${client.states().join(',')}; read ${read}; flush ${flush}`)
    await client.close()
    await again.stop('SIGKILL')
    assert.equal(read, 'ok', 'a read of a range no write touched, long after the bound')
    assert.equal(flush, 'NBD_ERR_DURABILITY', 'the FLUSH says the acknowledged write is gone')
  })
})
