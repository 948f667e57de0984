/**
 * The device ring (device-worker.ts, channel.ts) with a socket standing in for /dev/fuse: a
 * SOCK_SEQPACKET pair keeps one request per read, as the device does. The ring's counters start
 * just below the int32 wrap, where they used to hang after 2^31 requests (the reader's
 * `head + 1` went negative, the main thread's `tail` never equalled it again).
 *
 * The channel comes from dist/ (npm test builds it first): its reader thread is a worker,
 * which does not get the test runner's TypeScript loader.
 */
import assert from 'node:assert/strict'
import { closeSync, read, writeSync } from 'node:fs'
import { test } from 'node:test'
import { within } from '../helpers/assert.ts'
import { IN_HEADER, OUT_HEADER } from '../../dist/fuse/abi.js'
import { FuseChannel } from '../../dist/fuse/channel.js'
import { u64 } from '../../dist/fuse/codec.js'
import { SOCK_SEQPACKET, socketPair } from '../../dist/util/libc.js'

function readReply (fd: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const b = Buffer.alloc(64)
    read(fd, b, 0, b.length, null, (err, n) => {
      if (err !== null) reject(err)
      else if (n < OUT_HEADER) reject(new Error(`short reply (${n} bytes)`))
      else resolve(u64(b, 8))
    })
  })
}

test('the device ring keeps handing requests over across the int32 wrap of its counters', async () => {
  const [device, kernel] = socketPair(SOCK_SEQPACKET)
  const slotCount = 6 // not a power of two: the ring is larger than the slot count
  const channel = new FuseChannel({ fd: device, slotCount, slotSize: 4096, ringStart: 2 ** 31 - 25 }, (request, slot) => {
    channel.reply(u64(request, 8), 0, Buffer.alloc(8))
    channel.release(slot)
  })
  const ended = channel.ended.then((why) => why)
  try {
    const total = 120
    const batch = slotCount
    let next = 1
    for (let sent = 0; sent < total; sent += batch) {
      const uniques: number[] = []
      for (let i = 0; i < batch; i++, next++) {
        const request = Buffer.alloc(IN_HEADER)
        request.writeUInt32LE(IN_HEADER, 0)
        request.writeBigUInt64LE(BigInt(next), 8)
        writeSync(kernel, request)
        uniques.push(next)
      }
      const got: number[] = []
      for (let i = 0; i < batch; i++) got.push(await within(readReply(kernel), 5000, `reply ${sent + i + 1} of ${total}`))
      assert.deepEqual(got.sort((a, b) => a - b), uniques)
    }
    assert.equal(channel.repliesWritten, total)
  } finally {
    // The reader sees end of stream and stops; then the channel lets go of its end.
    closeSync(kernel)
    assert.equal(await within(ended, 5000, 'the reader stopping'), 'unmounted')
    channel.close()
  }
})
