/**
 * The request path's own cost, counted rather than timed: how many promises one 4 KiB READ or
 * WRITE creates at QD 16 against nbdkit (async_hooks sees every promise, ours and Node's). The
 * engine settles one promise per request (the caller's); the count here also holds the test
 * loop's own await and the socket reads that wait for replies, shared by every reply they
 * bring. The engine before the one-promise path created 13 per read and 14.7 per write.
 */
import assert from 'node:assert/strict'
import { createHook } from 'node:async_hooks'
import { test } from 'node:test'
import { NbdClient } from '../../src/index.ts'
import { testScene } from '../helpers/servers.ts'

const QD = 16
const REQUESTS = 4000

test('a 4 KiB read or write at QD 16 creates fewer than four promises', async () => {
  const scene = testScene()
  const server = await scene.nbdkit('mem', ['memory', '64M'])
  const client = await NbdClient.connect(server.uri(), { maxInFlight: QD })
  scene.defer(() => client.close())
  const blocks = client.size / 4096
  let promises = 0
  const hook = createHook({ init (_id, type) { if (type === 'PROMISE') promises++ } })
  const run = async (kind: 'read' | 'write'): Promise<void> => {
    let left = REQUESTS
    await Promise.all(Array.from({ length: QD }, async (_, i) => {
      const buf = Buffer.alloc(4096, i)
      while (left-- > 0) {
        const offset = ((left * 7919) % blocks) * 4096
        if (kind === 'read') await client.readInto(buf, offset)
        else await client.write(buf, offset)
      }
    }))
  }
  for (const kind of ['write', 'read'] as const) {
    await run(kind)
    promises = 0
    hook.enable()
    try {
      await run(kind)
    } finally {
      hook.disable()
    }
    const perRequest = promises / REQUESTS
    assert.ok(perRequest < 4, `${perRequest.toFixed(2)} promises per 4 KiB ${kind}`)
  }
})
