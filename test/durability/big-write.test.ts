/**
 * Defect 2: a write acknowledged by the server but not kept in the write ledger. With a small
 * ledger (replayLog 64 KiB) a 1 MiB write does not fit: its caller waits for a FLUSH. The
 * server is killed (-9) while that FLUSH is on the wire and restarted. The write
 * may reject; if it resolves, its data must be in the image once the next FLUSH succeeds
 * (checked in the file after the server is killed again: only what reached it counts).
 */
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { NbdClient } from '../../src/index.ts'
import { handled, within } from '../helpers/assert.ts'
import { durabilityScene, KiB, MiB, pattern, QUICK_BACKOFF, volatileFile } from './scene.ts'

const scene = durabilityScene()

async function outcome (p: Promise<unknown>): Promise<{ ok: boolean, error?: string }> {
  try {
    await p
    return { ok: true }
  } catch (err) {
    return { ok: false, error: `${(err as { code?: string }).code ?? ''} ${(err as Error).message}` }
  }
}

describe('a write too big for the ledger, crash while the FLUSH it waits for is on the wire', () => {
  for (const reconnectDelay of [10_000, 0]) {
    test(`reconnectDelay ${reconnectDelay}: the 1 MiB write rejects, or it resolves and the next successful FLUSH puts it on disk`, async (t) => {
      const image = scene.image(`big${reconnectDelay}.img`, 8 * MiB)
      const name = `big${reconnectDelay}`
      // nbdkit 1.32 cannot delay a FLUSH itself: the delay filter sits under the cache instead,
      // so the write is acknowledged from the cache at once and the FLUSH (writing the cache
      // back, 1 s per 64 KiB block) stays on the wire for seconds.
      const server = await scene.nbdkit(name, ['--filter=cache', '--filter=delay', 'file', image, 'cache=writeback', 'delay-write=1000ms'])
      const client = scene.client(await NbdClient.connect(server.uri(), {
        replayLog: 64 * KiB, reconnectDelay, requestTimeout: 20_000, backoff: QUICK_BACKOFF
      }))
      const data = pattern(7, MiB)
      const offset = 2 * MiB
      let settled = false
      const write = handled(client.write(data, offset).finally(() => { settled = true }))
      // The server acknowledges at once; the write's caller then waits for the FLUSH in the delay filter.
      await sleep(500)
      assert.equal(settled, false, 'the write waits for the FLUSH on the wire when the server dies')
      await server.stop('SIGKILL')
      const again = await scene.nbdkit(name, volatileFile(image))
      const wrote = await outcome(within(write, 30_000, 'the 1 MiB write'))
      // The next FLUSH: retried while it reports a reconnect, until it succeeds or says DURABILITY.
      let flushed = false
      let flushError = ''
      const deadline = Date.now() + 20_000
      while (!flushed && Date.now() < deadline) {
        const r = await outcome(client.flush())
        flushed = r.ok
        if (!r.ok) {
          flushError = r.error ?? ''
          if (/DURABILITY/.test(flushError)) break
          await sleep(100)
        }
      }
      t.diagnostic(`write ${JSON.stringify(wrote)}; flush ${flushed ? 'ok' : flushError}`)
      await client.close()
      await again.stop('SIGKILL')
      const disk = readFileSync(image).subarray(offset, offset + MiB)
      if (wrote.ok && flushed) {
        assert.ok(disk.equals(data), 'the write resolved and a later FLUSH succeeded: its data must be on disk')
      } else {
        // Allowed: the write rejected, or the FLUSH refused to vouch for it (NBD_ERR_DURABILITY).
        assert.ok(!wrote.ok || /DURABILITY/.test(flushError), `write ${JSON.stringify(wrote)}, flush error ${flushError}`)
      }
    })
  }
})
