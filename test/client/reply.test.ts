/**
 * The reply of one request as a pure state machine (src/client/engine/reply.ts), fed byte
 * fixtures: headers parsed from wire bytes, payloads as the server sends them.
 */
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { NBD_CMD, NBD_CMD_FLAG, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE } from '../../src/protocol/constants.ts'
import { parseReplyHeader } from '../../src/protocol/reply.ts'
import { Reply, STEP, type ChunkCounters } from '../../src/client/engine/reply.ts'

const COOKIE = 0x10001n

function simple (error = 0): Buffer {
  const b = Buffer.alloc(16)
  b.writeUInt32BE(0x67446698, 0)
  b.writeUInt32BE(error, 4)
  b.writeBigUInt64BE(COOKIE, 8)
  return b
}

function chunk (type: number, length: number, done = true): Buffer {
  const b = Buffer.alloc(20)
  b.writeUInt32BE(0x668e33ef, 0)
  b.writeUInt16BE(done ? NBD_REPLY_FLAG_DONE : 0, 4)
  b.writeUInt16BE(type, 6)
  b.writeBigUInt64BE(COOKIE, 8)
  b.writeUInt32BE(length, 16)
  return b
}

function u64 (n: bigint): Buffer {
  const b = Buffer.alloc(8)
  b.writeBigUInt64BE(n)
  return b
}

function errorPayload (error: number, message: string, offset?: bigint): Buffer {
  const m = Buffer.from(message)
  const b = Buffer.alloc(6 + m.length + (offset === undefined ? 0 : 8))
  b.writeUInt32BE(error, 0)
  b.writeUInt16BE(m.length, 4)
  m.copy(b, 6)
  if (offset !== undefined) b.writeBigUInt64BE(offset, 6 + m.length)
  return b
}

function read (offset: bigint, length: number, flags = 0): { reply: Reply, dest: Buffer, counters: ChunkCounters } {
  const dest = Buffer.alloc(length, 0xee)
  const counters = { simple: 0, data: 0, hole: 0, status: 0, error: 0, none: 0 }
  return { reply: new Reply({ type: NBD_CMD.READ, flags, offset, length, dest }, 'structured', new Map(), counters), dest, counters }
}

describe('reply state machine', () => {
  test('a simple reply to WRITE is done at once; with an error, the error is the result', () => {
    const ok = new Reply({ type: NBD_CMD.WRITE, flags: 0, offset: 0n, length: 512, dest: null }, 'simple', new Map())
    assert.equal(ok.header(parseReplyHeader(simple())), STEP.DONE)
    ok.verify()
    assert.equal(ok.result(), undefined)
    const failed = new Reply({ type: NBD_CMD.WRITE, flags: 0, offset: 0n, length: 512, dest: null }, 'simple', new Map())
    assert.equal(failed.header(parseReplyHeader(simple(28))), STEP.DONE)
    assert.throws(() => failed.result(), { code: 'NBD_ERR_SERVER', errno: 'ENOSPC' })
  })

  test('a simple READ reply asks for the whole payload into the destination', () => {
    const reply = new Reply({ type: NBD_CMD.READ, flags: 0, offset: 4096n, length: 100, dest: Buffer.alloc(100) }, 'simple', new Map())
    assert.equal(reply.header(parseReplyHeader(simple())), STEP.DATA)
    assert.deepEqual([reply.at, reply.length, reply.what], [0, 100, 'READ data'])
    assert.equal(reply.data(), STEP.DONE)
  })

  test('one OFFSET_DATA chunk with all the data: offset first, then the data in place', () => {
    const { reply, counters } = read(8192n, 4096)
    assert.equal(reply.header(parseReplyHeader(chunk(NBD_REPLY_TYPE.OFFSET_DATA, 8 + 4096))), STEP.PAYLOAD)
    assert.equal(reply.length, 8)
    assert.equal(reply.payload(u64(8192n)), STEP.DATA)
    assert.deepEqual([reply.at, reply.length], [0, 4096])
    assert.equal(reply.data(), STEP.DONE)
    reply.verify()
    assert.equal(counters.data, 1)
  })

  test('data and hole chunks in any order reassemble; a hole is zeroed in the destination', () => {
    const { reply, dest } = read(0n, 4096)
    assert.equal(reply.header(parseReplyHeader(chunk(NBD_REPLY_TYPE.OFFSET_HOLE, 12, false))), STEP.PAYLOAD)
    const hole = Buffer.alloc(12)
    hole.writeBigUInt64BE(2048n, 0)
    hole.writeUInt32BE(2048, 8)
    assert.equal(reply.payload(hole), STEP.HEADER)
    assert.deepEqual(dest.subarray(2048), Buffer.alloc(2048))
    assert.equal(reply.header(parseReplyHeader(chunk(NBD_REPLY_TYPE.OFFSET_DATA, 8 + 2048))), STEP.PAYLOAD)
    assert.equal(reply.payload(u64(0n)), STEP.DATA)
    assert.deepEqual([reply.at, reply.length], [0, 2048])
    assert.equal(reply.data(), STEP.DONE)
    reply.verify()
  })

  test('DONE before every byte arrived breaks the protocol (verify throws)', () => {
    const { reply } = read(0n, 4096)
    reply.header(parseReplyHeader(chunk(NBD_REPLY_TYPE.OFFSET_DATA, 8 + 1024)))
    reply.payload(u64(0n))
    assert.equal(reply.data(), STEP.DONE)
    assert.throws(() => { reply.verify() }, { code: 'NBD_ERR_PROTOCOL', message: /without data for every byte/ })
  })

  test('an error chunk is the result; the first error wins; the reply runs on to DONE', () => {
    const { reply } = read(0n, 4096)
    reply.header(parseReplyHeader(chunk(NBD_REPLY_TYPE.ERROR, 6 + 3, false)))
    assert.equal(reply.payload(errorPayload(5, 'bad')), STEP.HEADER)
    reply.header(parseReplyHeader(chunk(NBD_REPLY_TYPE.ERROR, 6, true)))
    assert.equal(reply.payload(errorPayload(28, '')), STEP.DONE)
    reply.verify()
    assert.throws(() => reply.result(), { code: 'NBD_ERR_SERVER', errno: 'EIO', message: /bad/ })
  })

  test('ERROR_OFFSET outside the request breaks the protocol', () => {
    const { reply } = read(4096n, 4096)
    reply.header(parseReplyHeader(chunk(NBD_REPLY_TYPE.ERROR_OFFSET, 14)))
    assert.throws(() => reply.payload(errorPayload(5, '', 100n)), { code: 'NBD_ERR_PROTOCOL', message: /lies outside/ })
  })

  test('a simple reply after a chunk, and data under DF in two chunks, break the protocol', () => {
    const { reply } = read(0n, 4096)
    reply.header(parseReplyHeader(chunk(NBD_REPLY_TYPE.OFFSET_DATA, 8 + 1024, false)))
    reply.payload(u64(0n))
    reply.data()
    assert.throws(() => reply.header(parseReplyHeader(simple())), { code: 'NBD_ERR_PROTOCOL' })
    const df = read(0n, 4096, NBD_CMD_FLAG.DF).reply
    df.header(parseReplyHeader(chunk(NBD_REPLY_TYPE.OFFSET_DATA, 8 + 1024, false)))
    df.payload(u64(0n))
    df.data()
    df.header(parseReplyHeader(chunk(NBD_REPLY_TYPE.OFFSET_DATA, 8 + 1024, true)))
    assert.throws(() => df.payload(u64(1024n)), { code: 'NBD_ERR_PROTOCOL', message: /DF/ })
  })

  test('BLOCK_STATUS: one chunk per selected context; a missing context fails the request only', () => {
    const contexts = new Map([[1, 'base:allocation'], [2, 'qemu:dirty-bitmap:b']])
    const reply = new Reply({ type: NBD_CMD.BLOCK_STATUS, flags: 0, offset: 0n, length: 65536, dest: null }, 'structured', contexts)
    const status = Buffer.alloc(4 + 16)
    status.writeUInt32BE(1, 0)
    status.writeUInt32BE(4096, 4)
    status.writeUInt32BE(0, 8)
    status.writeUInt32BE(61440, 12)
    status.writeUInt32BE(3, 16)
    assert.equal(reply.header(parseReplyHeader(chunk(NBD_REPLY_TYPE.BLOCK_STATUS, status.length))), STEP.PAYLOAD)
    assert.equal(reply.payload(status), STEP.DONE)
    reply.verify()
    assert.throws(() => reply.result(), { code: 'NBD_ERR_PROTOCOL', message: /covers 1 of the 2/ })
  })
})
