/**
 * A hostile server sets no one's memory: it advertises a preferred block size of 256 MiB (the
 * protocol allows up to 4 GiB) for a 512 MiB export, and answers every READ with a hole (cheap
 * for it, a filled buffer for us). `nbdts copy` to null: still asks at most 32 MiB per request,
 * keeps --queue-size bytes in flight per connection, and its peak RSS stays small.
 */
import assert from 'node:assert/strict'
import { after, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { NBD_CMD } from '../../src/protocol/constants.ts'
import { nbdts } from '../helpers/cli.ts'
import { FakeServer } from '../helpers/fake-server.ts'

const M = 1024 * 1024
const servers: FakeServer[] = []
after(async () => { for (const s of servers) await s.close() })

interface Seen { largest: number, outstanding: number, peak: number }

async function hostileServer (): Promise<{ server: FakeServer, seen: Seen }> {
  const seen: Seen = { largest: 0, outstanding: 0, peak: 0 }
  const server = await FakeServer.start(async (peer) => {
    await peer.negotiate({ size: 512n * BigInt(M), contexts: {}, blockSize: [512, 256 * M, 256 * M] })
    for (;;) {
      const req = await peer.readRequest()
      if (req.type === NBD_CMD.DISC) return
      if (req.type !== NBD_CMD.READ) {
        peer.simpleReply(req.cookie)
        continue
      }
      const length = Number(req.length)
      seen.largest = Math.max(seen.largest, length)
      seen.outstanding += length
      seen.peak = Math.max(seen.peak, seen.outstanding)
      // Answered a little later, so that requests pile up as far as the client lets them.
      void sleep(2).then(() => {
        seen.outstanding -= length
        peer.offsetHole(req, req.offset, length)
      })
    }
  })
  servers.push(server)
  return { server, seen }
}

test('a server preferring 256 MiB requests: copy asks for at most the queue size, in flight and per request, and stays small', async () => {
  const { server, seen } = await hostileServer()
  const r = await nbdts(['copy', '--connections', '1', '--verbose', server.uri(), 'null:'], { timeoutMs: 120_000 })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(server.errors, [])
  const rss = Number(/peak RSS (\d+) MiB/.exec(r.stderr)?.[1])
  assert.ok(rss < 160, `peak RSS ${rss} MiB: ${r.stderr}`)
  assert.ok(seen.largest <= 16 * M, `a READ of ${seen.largest / M} MiB (the default queue is 16 MiB)`)
  assert.ok(seen.peak <= 16 * M, `${seen.peak / M} MiB in flight on one connection`)

  // A larger queue lets the request grow, to 32 MiB and no further.
  const again = await hostileServer()
  const big = await nbdts(['copy', '--connections', '1', '--queue-size', '64M', again.server.uri(), 'null:'], { timeoutMs: 120_000 })
  assert.equal(big.code, 0, big.stderr)
  assert.equal(again.seen.largest, 32 * M)
  assert.ok(again.seen.peak <= 64 * M, `${again.seen.peak / M} MiB in flight`)
})
