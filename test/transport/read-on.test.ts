/**
 * Reading on (read-hook.ts): a short read into a caller's buffer is followed at once by more
 * reads in the same callback, until the buffer is full or the socket is empty, as QEMU's
 * receive loop does, instead of a trip back to epoll per piece of a large reply. What can go
 * wrong there: bytes landing in the wrong place, the socket's end or error swallowed by a read
 * libuv did not make, a READ left waiting.
 */
import assert from 'node:assert/strict'
import { after, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { NbdClient } from '../../src/index.ts'
import { ReadHook } from '../../src/transport/read-hook.ts'
import { FakeServer, type FakePeer } from '../helpers/fake-server.ts'
import { startNbdkit, tcpPort, tempDir, type RunningServer } from '../helpers/servers.ts'

const MiB = 1 << 20
const dir = tempDir()
const servers: RunningServer[] = []
const fakes: FakeServer[] = []
after(async () => {
  await Promise.all(servers.map((s) => s.stop('SIGKILL')))
  await Promise.all(fakes.map((s) => s.close()))
})

/** nbdkit's pattern plugin: each 8-byte word holds its own offset. */
function checkPattern (buf: Buffer, offset: number): void {
  for (let at = 0; at < buf.length; at += 8) {
    if (buf.readBigUInt64BE(at) !== BigInt(offset + at)) assert.fail(`wrong bytes at ${offset + at}`)
  }
}

function pattern (size: number): Buffer {
  const data = Buffer.alloc(size)
  for (let at = 0; at < size; at += 8) data.writeBigUInt64BE(BigInt(at), at)
  return data
}

function simpleHeader (cookie: bigint): Buffer {
  const h = Buffer.alloc(16)
  h.writeUInt32BE(0x67446698, 0)
  h.writeBigUInt64BE(cookie, 8)
  return h
}

for (const transport of ['unix', 'tcp'] as const) {
  test(`nbdkit over ${transport}: large READs are read on within a callback, and land intact`, async (t) => {
    const server = await startNbdkit(dir, ['pattern', '256M'], `pattern-${transport}`, transport === 'tcp' ? { tcp: tcpPort() } : {})
    servers.push(server)
    const client = await NbdClient.connect(server.uri(), { maxInFlight: 4 })
    try {
      const before = ReadHook.readOnBytes
      for (let round = 0; round < 4; round++) {
        await Promise.all(Array.from({ length: 4 }, async (_, i) => {
          const offset = (round * 4 + i) * 16 * MiB
          checkPattern(await client.read(16 * MiB, offset), offset)
        }))
      }
      const readOn = ReadHook.readOnBytes - before
      t.diagnostic(`${readOn} of ${256 * MiB} bytes read on`)
      // A 16 MiB reply arrives a socket buffer at a time (~200 KiB over a Unix socket): with
      // hundreds of pieces, the server refills the socket while a callback runs on some of them.
      assert.ok(readOn > 0, 'no byte was read on')
    } finally {
      await client.close()
    }
  })
}

/** A fake server that answers the first READ with `send`, then keeps the connection. */
async function fake (send: (peer: FakePeer, cookie: bigint, data: Buffer) => Promise<void>): Promise<FakeServer> {
  const data = pattern(4 * MiB)
  const server = await FakeServer.start(async (peer) => {
    await peer.negotiate({ size: BigInt(data.length), structured: false })
    const r = await peer.readRequest()
    await send(peer, r.cookie, data.subarray(Number(r.offset), Number(r.offset + r.length)))
    await peer.closed().catch(() => undefined)
  })
  fakes.push(server)
  return server
}

test('a payload that stops and starts again (the socket empty mid-payload) lands intact', async () => {
  const server = await fake(async (peer, cookie, data) => {
    peer.write(simpleHeader(cookie), data.subarray(0, 300_000))
    await sleep(30)
    peer.write(data.subarray(300_000, 2 * MiB))
    await sleep(30)
    peer.write(data.subarray(2 * MiB))
  })
  const client = await NbdClient.connect(server.uri())
  try {
    checkPattern(await client.read(4 * MiB, 0), 0)
  } finally {
    client.destroy()
  }
})

test('a server that closes mid-payload fails the READ with the connection\'s end, not a hang', async () => {
  const server = await fake(async (peer, cookie, data) => {
    peer.write(simpleHeader(cookie), data.subarray(0, 3 * MiB))
    await sleep(20)
    peer.destroy()
  })
  const client = await NbdClient.connect(server.uri())
  try {
    await assert.rejects(client.read(4 * MiB, 0), (err: Error & { code?: string }) => {
      assert.match(err.message, /closed/)
      return true
    })
  } finally {
    client.destroy()
  }
})
