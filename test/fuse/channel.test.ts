/**
 * The device readers (drained-reader.ts on the main thread; thread-reader.ts with
 * device-worker.ts) with a socket standing in for /dev/fuse: a SOCK_SEQPACKET pair keeps one
 * request per read, as the device does. The thread reader's ring counters start just below the
 * int32 wrap, where they used to hang after 2^31 requests (the reader's `head + 1` went
 * negative, the main thread's `tail` never equalled it again).
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

function request (unique: number): Buffer {
  const b = Buffer.alloc(IN_HEADER)
  b.writeUInt32LE(IN_HEADER, 0)
  b.writeBigUInt64LE(BigInt(unique), 8)
  return b
}

for (const reader of ['thread', 'drain'] as const) {
  test(`${reader} reader: requests keep being handed over (the thread ring across the int32 wrap of its counters)`, async () => {
    const [device, kernel] = socketPair(SOCK_SEQPACKET)
    const slotCount = 6 // not a power of two: the ring is larger than the slot count
    const channel = new FuseChannel({ fd: device, slotCount, slotSize: 4096, ringStart: 2 ** 31 - 25, reader }, (request, slot) => {
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
          writeSync(kernel, request(next))
          uniques.push(next)
        }
        const got: number[] = []
        for (let i = 0; i < batch; i++) got.push(await within(readReply(kernel), 5000, `reply ${sent + i + 1} of ${total}`))
        assert.deepEqual(got.sort((a, b) => a - b), uniques)
      }
      assert.equal(channel.repliesWritten, total)
      assert.equal(channel.reader, reader)
    } finally {
      // The reader sees end of stream and stops; then the channel lets go of its end.
      closeSync(kernel)
      assert.equal(await within(ended, 5000, 'the reader stopping'), 'unmounted')
      channel.close()
    }
  })
}

test('drain reader: a burst is read in one wake-up, replies may come later, and with every slot busy nothing more is read', async () => {
  const [device, kernel] = socketPair(SOCK_SEQPACKET)
  const held: Array<{ unique: number, slot: number }> = []
  let seenInFirstTurn = -1
  const channel = new FuseChannel({ fd: device, slotCount: 4, slotSize: 4096, reader: 'drain' }, (req, slot) => {
    // Everything read in the same drain is seen before the first microtask runs.
    if (held.length === 0) queueMicrotask(() => { seenInFirstTurn = held.length })
    held.push({ unique: u64(req, 8), slot })
  })
  const ended = channel.ended.then((why) => why)
  try {
    for (let unique = 1; unique <= 6; unique++) writeSync(kernel, request(unique))
    await within((async () => { while (held.length < 4) await new Promise((resolve) => setImmediate(resolve)) })(), 5000, 'the first four requests')
    assert.equal(seenInFirstTurn, 4, 'four slots, four requests in one drain')
    await new Promise((resolve) => setTimeout(resolve, 50))
    assert.equal(held.length, 4, 'no free slot: requests 5 and 6 stay in the device')
    // Answer from a later turn, then free the slots: the rest is read.
    for (const h of held.splice(0)) {
      await Promise.resolve()
      channel.reply(h.unique, 0, Buffer.alloc(8))
      channel.release(h.slot)
    }
    const replies: number[] = []
    for (let i = 0; i < 4; i++) replies.push(await within(readReply(kernel), 5000, `reply ${i + 1}`))
    assert.deepEqual(replies.sort((a, b) => a - b), [1, 2, 3, 4])
    await within((async () => { while (held.length < 2) await new Promise((resolve) => setImmediate(resolve)) })(), 5000, 'requests 5 and 6')
    assert.deepEqual(held.map((h) => h.unique), [5, 6])
  } finally {
    closeSync(kernel)
    assert.equal(await within(ended, 5000, 'the reader stopping'), 'unmounted')
    channel.close()
  }
})

for (const reader of ['drain', 'thread'] as const) {
  test(`${reader} reader: a slot released twice is refused (two requests never share one); close() stops it and lets go of the descriptor`, async () => {
    const [device, kernel] = socketPair(SOCK_SEQPACKET)
    const held: Array<{ unique: number, slot: number }> = []
    const channel = new FuseChannel({ fd: device, slotCount: 2, slotSize: 4096, reader }, (req, slot) => {
      held.push({ unique: u64(req, 8), slot })
    })
    const ended = channel.ended.then((why) => why)
    try {
      writeSync(kernel, request(1))
      await within((async () => { while (held.length < 1) await new Promise((resolve) => setImmediate(resolve)) })(), 5000, 'request 1')
      const first = held[0]!
      channel.reply(first.unique, 0, Buffer.alloc(8))
      channel.release(first.slot)
      assert.throws(() => { channel.release(first.slot) }, /released while it holds no request/)
      assert.equal(await within(readReply(kernel), 5000, 'reply 1'), 1)
      // The slot came back once: the next two requests get two different slots.
      writeSync(kernel, request(2))
      writeSync(kernel, request(3))
      await within((async () => { while (held.length < 3) await new Promise((resolve) => setImmediate(resolve)) })(), 5000, 'requests 2 and 3')
      assert.notEqual(held[1]!.slot, held[2]!.slot)
      channel.close()
      // The reader thread ends by itself once its blocking read fails (EBADF once closed, or the
      // peer's end of stream below); the drained reader stops at once.
      if (reader === 'drain') assert.equal(await within(ended, 5000, 'the reader stopping'), 'stopped')
      // Closed: the device's descriptor is gone (no leak), so nothing more can be read.
      assert.throws(() => writeSync(kernel, request(4)), { code: 'EPIPE' })
      assert.equal(held.length, 3)
    } finally {
      closeSync(kernel)
      channel.close()
    }
  })
}
