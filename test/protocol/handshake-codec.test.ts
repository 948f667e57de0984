import assert from 'node:assert/strict'
import { test } from 'node:test'
import {
  NBD_INFO, NBD_OPT, NBD_REP, NBD_REP_MAGIC, checkBlockSize, decodeString, encodeClientFlags, encodeInfoRequest,
  encodeMetaContextRequest, encodeOptionRequest, parseGreetingPrefix, parseHandshakeFlags, parseInfoReply,
  parseMetaContextReply, parseOptionError, parseOptionReplyHeader, parseServerReply, usableTransmissionFlags, NBD_FLAG
} from '../../src/protocol/index.ts'
import '../helpers/assert.ts'

const protocolError = (pattern: RegExp) => (err: Error & { code?: string }) => err.code === 'NBD_ERR_PROTOCOL' && pattern.test(err.message)

test('greeting: newstyle, oldstyle and garbage', () => {
  // nbdkit, qemu-nbd and nbd-server all send this (testing.md, raw probe).
  assert.equal(parseGreetingPrefix(Buffer.from('4e42444d4147494349484156454f5054', 'hex')), 'newstyle')
  assert.equal(parseGreetingPrefix(Buffer.from('4e42444d414749430000420281861253', 'hex')), 'oldstyle')
  assert.throws(() => parseGreetingPrefix(Buffer.from('485454502f312e3120323030204f4b0d', 'hex')), protocolError(/not an NBD server/))
  assert.throws(() => parseGreetingPrefix(Buffer.from('4e42444d414749430000000000000001', 'hex')), protocolError(/unknown NBD greeting magic/))
})

test('client flags: only known bits, only those the server offered', () => {
  assert.equal(encodeClientFlags(parseHandshakeFlags(0x0003)).readUInt32BE(0), 3)
  assert.equal(encodeClientFlags(parseHandshakeFlags(0x0001)).readUInt32BE(0), 1)
  // Unknown server bits are ignored and never echoed.
  assert.equal(encodeClientFlags(parseHandshakeFlags(0xfffd)).readUInt32BE(0), 1)
  assert.equal(encodeClientFlags(parseHandshakeFlags(0)).readUInt32BE(0), 0)
})

test('option request bytes', () => {
  assert.equal(encodeOptionRequest(NBD_OPT.STRUCTURED_REPLY).toString('hex'), '49484156454f50540000000800000000')
  const info = encodeInfoRequest('exp', [NBD_INFO.BLOCK_SIZE])
  assert.equal(info.toString('hex'), '00000003657870' + '0001' + '0003')
  assert.throws(() => encodeInfoRequest('x', [3, 3]), /duplicate/)
  assert.equal(encodeMetaContextRequest('', ['base:allocation']).toString('hex'),
    '00000000' + '00000001' + '0000000f' + Buffer.from('base:allocation').toString('hex'))
  assert.throws(() => encodeMetaContextRequest('a\0b', []), (e: Error & { code?: string }) => e.code === 'NBD_ERR_INVALID_ARGUMENT')
})

function replyHeader (option: number, type: number, length: number, magic = NBD_REP_MAGIC): Buffer {
  const h = Buffer.alloc(20)
  h.writeBigUInt64BE(magic, 0)
  h.writeUInt32BE(option, 8)
  h.writeUInt32BE(type, 12)
  h.writeUInt32BE(length, 16)
  return h
}

test('option reply header: magic, echo, fit, length cap', () => {
  assert.deepEqual(parseOptionReplyHeader(replyHeader(7, NBD_REP.INFO, 12), 7), { option: 7, type: NBD_REP.INFO, length: 12 })
  assert.throws(() => parseOptionReplyHeader(replyHeader(7, 1, 0, 0x1234n), 7), protocolError(/bad option reply magic/))
  assert.throws(() => parseOptionReplyHeader(replyHeader(3, 1, 0), 7), protocolError(/NBD_OPT_LIST while NBD_OPT_GO was pending/))
  assert.throws(() => parseOptionReplyHeader(replyHeader(8, NBD_REP.ACK, 4), 8), protocolError(/ACK .* carries 4 bytes/))
  assert.throws(() => parseOptionReplyHeader(replyHeader(8, NBD_REP.SERVER, 4), 8), protocolError(/unexpected NBD_REP_SERVER/))
  assert.throws(() => parseOptionReplyHeader(replyHeader(7, NBD_REP.META_CONTEXT, 20), 7), protocolError(/unexpected NBD_REP_META_CONTEXT/))
  assert.throws(() => parseOptionReplyHeader(replyHeader(7, 99, 0), 7), protocolError(/unexpected reply type 0x63/))
  assert.throws(() => parseOptionReplyHeader(replyHeader(7, NBD_REP.INFO, 1 << 20), 7), protocolError(/cap/))
  // Unknown *error* types are fine: the option failed.
  assert.equal(parseOptionReplyHeader(replyHeader(7, 0x80000063, 3), 7).type, 0x80000063)
  assert.deepEqual(parseOptionError(NBD_REP.ERR_UNKNOWN, Buffer.from('no such export')),
    { type: NBD_REP.ERR_UNKNOWN, name: 'NBD_REP_ERR_UNKNOWN', message: 'no such export' })
})

test('NBD_REP_INFO payloads', () => {
  const exp = Buffer.from('0000' + '0000000004000000' + '0ded', 'hex')
  assert.deepEqual(parseInfoReply(exp), { type: 'export', size: 64n * 1024n * 1024n, flags: 0x0ded })
  assert.throws(() => parseInfoReply(Buffer.concat([exp, Buffer.alloc(1)])), protocolError(/NBD_INFO_EXPORT is 13 bytes/))
  assert.deepEqual(parseInfoReply(Buffer.from('0001657870', 'hex')), { type: 'name', name: 'exp' })
  assert.deepEqual(parseInfoReply(Buffer.from('000241', 'hex')), { type: 'description', description: 'A' })
  const bs = Buffer.from('0003' + '00000200' + '00001000' + '02000000', 'hex')
  assert.deepEqual(parseInfoReply(bs), { type: 'block-size', blockSize: { minimum: 512, preferred: 4096, maximum: 32 * 1024 * 1024 } })
  assert.throws(() => parseInfoReply(bs.subarray(0, 13)), protocolError(/NBD_INFO_BLOCK_SIZE is 13 bytes/))
  assert.throws(() => parseInfoReply(Buffer.from('0003' + '00000300' + '00001000' + '02000000', 'hex')), protocolError(/minimum must be a power of 2/))
  assert.deepEqual(parseInfoReply(Buffer.from('00630102', 'hex')), { type: 'unknown', infoType: 0x63 })
  assert.throws(() => parseInfoReply(Buffer.from('00', 'hex')), protocolError(/too short/))
  assert.throws(() => parseInfoReply(Buffer.from('0001ff', 'hex')), protocolError(/not valid UTF-8/))
  assert.throws(() => parseInfoReply(Buffer.from('00016100', 'hex')), protocolError(/NUL/))
})

test('block size validity (spec §"Size constraints")', () => {
  assert.equal(checkBlockSize({ minimum: 1, preferred: 4096, maximum: 0xffffffff }), undefined)
  assert.equal(checkBlockSize({ minimum: 512, preferred: 512, maximum: 512 }), undefined)
  assert.match(checkBlockSize({ minimum: 131072, preferred: 131072, maximum: 131072 })!, /64 KiB/)
  assert.match(checkBlockSize({ minimum: 1, preferred: 256, maximum: 4096 })!, /preferred/)
  assert.match(checkBlockSize({ minimum: 4096, preferred: 4096, maximum: 1024 })!, /maximum/)
  assert.match(checkBlockSize({ minimum: 4096, preferred: 4096, maximum: 6000 })!, /multiple/)
})

test('NBD_REP_SERVER and META_CONTEXT payloads', () => {
  // nbdkit: name "disk-a" followed by its description.
  const server = Buffer.concat([Buffer.from('00000006', 'hex'), Buffer.from('disk-aFirst test disk')])
  assert.deepEqual(parseServerReply(server), { name: 'disk-a', description: 'First test disk' })
  assert.throws(() => parseServerReply(Buffer.from('000000ff41', 'hex')), protocolError(/runs past/))
  assert.throws(() => parseServerReply(Buffer.from('0000', 'hex')), protocolError(/too short/))
  const ctx = Buffer.concat([Buffer.from('00000000', 'hex'), Buffer.from('base:allocation')])
  assert.deepEqual(parseMetaContextReply(ctx, false), { id: 0, name: 'base:allocation' })
  assert.throws(() => parseMetaContextReply(Buffer.concat([Buffer.alloc(4), Buffer.from('noleaf')]), false), protocolError(/namespace:leaf/))
  assert.throws(() => parseMetaContextReply(Buffer.concat([Buffer.alloc(4), Buffer.from('qemu:')]), false), protocolError(/wildcard/))
  assert.equal(parseMetaContextReply(Buffer.concat([Buffer.alloc(4), Buffer.from('qemu:')]), true).name, 'qemu:')
  assert.throws(() => parseMetaContextReply(Buffer.alloc(4), false), protocolError(/too short/))
})

test('strings are bounded', () => {
  assert.throws(() => decodeString(Buffer.alloc(4097, 0x41), 'x'), protocolError(/above the protocol's limit/))
  assert.equal(decodeString(Buffer.from('héllo'), 'x'), 'héllo')
})

test('transmission flags: HAS_FLAGS required, dependent features dropped', () => {
  assert.throws(() => usableTransmissionFlags(0x0dec, 'structured'), protocolError(/HAS_FLAGS/))
  assert.equal(usableTransmissionFlags(0x0ded, 'structured'), 0x0ded)
  assert.equal(usableTransmissionFlags(0x0ded, 'simple') & NBD_FLAG.SEND_DF, 0)
  const fastZeroWithoutZero = NBD_FLAG.HAS_FLAGS | NBD_FLAG.SEND_FAST_ZERO
  assert.equal(usableTransmissionFlags(fastZeroWithoutZero, 'structured') & NBD_FLAG.SEND_FAST_ZERO, 0)
  assert.equal(usableTransmissionFlags(NBD_FLAG.HAS_FLAGS | NBD_FLAG.BLOCK_STATUS_PAYLOAD, 'structured') & NBD_FLAG.BLOCK_STATUS_PAYLOAD, 0)
})
