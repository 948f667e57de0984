/**
 * Large payloads are read by the socket straight into the caller's buffer (read-hook.ts). The
 * buffer is lent to the socket until its next read, so an abort must take it back: after the
 * promise rejects, nothing may write into the caller's buffer again, whatever the server sends.
 */
import assert from 'node:assert/strict'
import { after, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { NbdClient } from '../../src/index.ts'
import { NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE, NBD_STRUCTURED_REPLY_MAGIC } from '../../src/protocol/constants.ts'
import { ReadHook, type ReadSink } from '../../src/transport/read-hook.ts'
import { rejectsWithCode, within } from '../helpers/assert.ts'
import { FakeServer } from '../helpers/fake-server.ts'

const MiB = 1 << 20

/** Counts the bytes the socket read straight into callers' buffers. */
let directBytes = 0
const attach = ReadHook.prototype.attach
ReadHook.prototype.attach = function (this: ReadHook, sink: ReadSink): Buffer[] {
  return attach.call(this, { ...sink, onDirect: (n: number) => { directBytes += n; sink.onDirect(n) } })
}
after(() => { ReadHook.prototype.attach = attach })

const servers: FakeServer[] = []
after(async () => { await Promise.all(servers.map((s) => s.close())) })

/** A structured OFFSET_DATA chunk with all of `data`, as raw bytes (to send in pieces). */
function chunkBytes (cookie: bigint, offset: bigint, data: Buffer): Buffer {
  const h = Buffer.alloc(28)
  h.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0)
  h.writeUInt16BE(NBD_REPLY_FLAG_DONE, 4)
  h.writeUInt16BE(NBD_REPLY_TYPE.OFFSET_DATA, 6)
  h.writeBigUInt64BE(cookie, 8)
  h.writeUInt32BE(8 + data.length, 16)
  h.writeBigUInt64BE(offset, 20)
  return Buffer.concat([h, data])
}

test('large reads land in place, byte for byte', async () => {
  const data = Buffer.alloc(4 * MiB)
  for (let i = 0; i < data.length; i += 4) data.writeUInt32BE(i, i)
  const server = await FakeServer.start(async (peer) => {
    await peer.negotiate({ size: BigInt(data.length) })
    for (let i = 0; i < 4; i++) {
      const r = await peer.readRequest()
      const bytes = chunkBytes(r.cookie, r.offset, data.subarray(Number(r.offset), Number(r.offset) + Number(r.length)))
      // In uneven pieces, so reads end anywhere in a payload.
      for (let at = 0; at < bytes.length; at += 100_003) {
        peer.write(bytes.subarray(at, at + 100_003))
        await sleep(1)
      }
    }
    await peer.closed()
  })
  servers.push(server)
  const client = await NbdClient.connect(server.uri())
  const before = directBytes
  for (let i = 0; i < 4; i++) {
    const buf = Buffer.alloc(MiB, 0xee)
    await within(client.readInto(buf, i * MiB), 5000)
    assert.ok(buf.equals(data.subarray(i * MiB, (i + 1) * MiB)), `MiB ${i} intact`)
  }
  assert.ok(directBytes - before > 2 * MiB, `most bytes went straight to the caller (${directBytes - before})`)
  await client.close()
})

test('an aborted read gets its buffer back: later bytes of its reply go nowhere', async () => {
  let release!: () => void
  const gate = new Promise<void>((resolve) => { release = resolve })
  const server = await FakeServer.start(async (peer) => {
    await peer.negotiate({ size: 4n * BigInt(MiB) })
    const r = await peer.readRequest()
    const bytes = chunkBytes(r.cookie, r.offset, Buffer.alloc(MiB, 0x11))
    // The first 600 KiB in pieces, so the socket is reading straight into the buffer when we stop.
    for (let at = 0; at < 600 * 1024; at += 64 * 1024) {
      peer.write(bytes.subarray(at, Math.min(at + 64 * 1024, 600 * 1024)))
      await sleep(2)
    }
    await gate
    peer.write(bytes.subarray(600 * 1024, bytes.length - 4096))
    await sleep(50)
    peer.write(bytes.subarray(bytes.length - 4096))
    const next = await peer.readRequest()
    peer.write(chunkBytes(next.cookie, next.offset, Buffer.alloc(Number(next.length), 0x33)))
    await peer.closed()
  })
  servers.push(server)
  const client = await NbdClient.connect(server.uri())
  const before = directBytes
  const dest = Buffer.alloc(MiB)
  const ac = new AbortController()
  const reading = client.readInto(dest, 0, { signal: ac.signal })
  for (let i = 0; i < 200 && dest[550 * 1024] !== 0x11; i++) await sleep(10)
  assert.ok(directBytes > before, 'the socket was reading straight into the buffer')
  ac.abort()
  await rejectsWithCode(reading, 'ABORT_ERR', 2000)
  // The caller owns the buffer again and reuses it.
  dest.fill(0xee)
  release()
  // The rest of the aborted reply is consumed; the connection stays in step.
  const next = await within(client.read(65536, MiB), 5000)
  assert.ok(next.equals(Buffer.alloc(65536, 0x33)))
  assert.ok(dest.equals(Buffer.alloc(MiB, 0xee)), 'nothing wrote into the buffer after the abort')
  await client.close()
})
