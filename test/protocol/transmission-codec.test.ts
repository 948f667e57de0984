import assert from 'node:assert/strict'
import { test } from 'node:test'
import {
  NBD_CMD, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE, ReadAssembly, classifyChunk, encodeRequest, parseBlockStatus,
  parseErrorChunk, parseOffsetHole, parseReplyHeader, replyHeaderSize, type ReplyHeader
} from '../../src/protocol/index.ts'
import { maxReadChunks } from '../../src/protocol/read-assembly.ts'
import '../helpers/assert.ts'

const protocolError = (pattern: RegExp) => (err: Error & { code?: string }) => err.code === 'NBD_ERR_PROTOCOL' && pattern.test(err.message)

test('request headers, compact and extended', () => {
  const b = Buffer.alloc(32)
  encodeRequest(b, 1, NBD_CMD.WRITE, 0x1_0000_0002, 4096n, 512, false)
  assert.equal(b.subarray(0, 28).toString('hex'), '25609513' + '0001' + '0001' + '0000000100000002' + '0000000000001000' + '00000200')
  encodeRequest(b, 0x20, NBD_CMD.WRITE, 7, 0x7fff_ffff_ffff_f000n, 2 ** 33, true)
  assert.equal(b.toString('hex'), '21e41c71' + '0020' + '0001' + '0000000000000007' + '7ffffffffffff000' + '0000000200000000')
})

function header (hex: string): Buffer {
  return Buffer.from(hex.replace(/ /g, ''), 'hex')
}

test('reply headers: styles allowed per mode, cookies, DoS lengths', () => {
  assert.equal(replyHeaderSize(0x67446698, 'simple'), 16)
  assert.equal(replyHeaderSize(0x67446698, 'structured'), 16)
  assert.throws(() => replyHeaderSize(0x67446698, 'extended'), protocolError(/simple reply after extended/))
  assert.throws(() => replyHeaderSize(0x668e33ef, 'simple'), protocolError(/structured reply chunk/))
  assert.throws(() => replyHeaderSize(0x6e8a278c, 'structured'), protocolError(/extended reply header/))
  assert.throws(() => replyHeaderSize(0x96744668, 'structured'), protocolError(/bad reply magic 0x96744668/))
  // nbdkit's READ reply header, from the raw probe in testing.md.
  const h = parseReplyHeader(header('668e33ef 0001 0001 0000000000000065 00001008'))
  assert.deepEqual(h, { simple: false, error: 0, flags: 1, type: 1, cookie: 0x65, offset: undefined, length: 4104 })
  const s = parseReplyHeader(header('67446698 0000001c 0000000000000002'))
  assert.deepEqual(s, { simple: true, error: 28, flags: 0, type: 0, cookie: 2, offset: undefined, length: 0 })
  // A cookie above 2^53 can never be one of ours.
  assert.equal(parseReplyHeader(header('67446698 00000000 ffffffff00000001')).cookie, -1)
  assert.throws(() => parseReplyHeader(header('6e8a278c 0001 0001 0000000000000001 0000000000000000 0000000100000000')), protocolError(/claims 4294967296 bytes/))
})

const chunk = (type: number, length: number, flags = NBD_REPLY_FLAG_DONE): ReplyHeader =>
  ({ simple: false, error: 0, flags, type, cookie: 1, offset: undefined, length })

test('chunk types are checked against the command and their lengths before any payload is read', () => {
  const { READ, WRITE, FLUSH, BLOCK_STATUS } = NBD_CMD
  assert.equal(classifyChunk(chunk(NBD_REPLY_TYPE.NONE, 0), WRITE, 512, 'structured'), 'none')
  assert.throws(() => classifyChunk(chunk(NBD_REPLY_TYPE.NONE, 0, 0), WRITE, 0, 'structured'), protocolError(/DONE/))
  assert.throws(() => classifyChunk(chunk(NBD_REPLY_TYPE.NONE, 4), WRITE, 0, 'structured'), protocolError(/empty/))
  assert.equal(classifyChunk(chunk(NBD_REPLY_TYPE.OFFSET_DATA, 4104), READ, 4096, 'structured'), 'offset-data')
  assert.throws(() => classifyChunk(chunk(NBD_REPLY_TYPE.OFFSET_DATA, 8), READ, 4096, 'structured'), protocolError(/at least one byte/))
  assert.throws(() => classifyChunk(chunk(NBD_REPLY_TYPE.OFFSET_DATA, 4105), READ, 4096, 'structured'), protocolError(/more data than/))
  assert.throws(() => classifyChunk(chunk(NBD_REPLY_TYPE.OFFSET_DATA, 100), WRITE, 4096, 'structured'), protocolError(/only answer READ/))
  assert.throws(() => classifyChunk(chunk(NBD_REPLY_TYPE.OFFSET_HOLE, 13), READ, 4096, 'structured'), protocolError(/exactly 12/))
  assert.equal(classifyChunk(chunk(NBD_REPLY_TYPE.BLOCK_STATUS, 12), BLOCK_STATUS, 4096, 'structured'), 'block-status')
  assert.throws(() => classifyChunk(chunk(NBD_REPLY_TYPE.BLOCK_STATUS, 14), BLOCK_STATUS, 4096, 'structured'), protocolError(/4 \+ 8n/))
  assert.throws(() => classifyChunk(chunk(NBD_REPLY_TYPE.BLOCK_STATUS, 4 + 8 * ((1 << 20) + 1)), BLOCK_STATUS, 4096, 'structured'), protocolError(/more than 1048576/))
  assert.throws(() => classifyChunk(chunk(NBD_REPLY_TYPE.BLOCK_STATUS, 12), READ, 4096, 'structured'), protocolError(/only answer BLOCK_STATUS/))
  assert.throws(() => classifyChunk(chunk(NBD_REPLY_TYPE.BLOCK_STATUS, 12), BLOCK_STATUS, 4096, 'extended'), protocolError(/compact status chunk/))
  assert.equal(classifyChunk(chunk(NBD_REPLY_TYPE.BLOCK_STATUS_EXT, 24), BLOCK_STATUS, 4096, 'extended'), 'block-status')
  assert.throws(() => classifyChunk(chunk(NBD_REPLY_TYPE.BLOCK_STATUS_EXT, 24), BLOCK_STATUS, 4096, 'structured'), protocolError(/without extended/))
  assert.equal(classifyChunk(chunk(NBD_REPLY_TYPE.ERROR, 6), FLUSH, 0, 'structured'), 'error')
  assert.throws(() => classifyChunk(chunk(NBD_REPLY_TYPE.ERROR, 5), FLUSH, 0, 'structured'), protocolError(/length out of range/))
  assert.throws(() => classifyChunk(chunk(NBD_REPLY_TYPE.ERROR, 6 + 4097), FLUSH, 0, 'structured'), protocolError(/length out of range/))
  assert.throws(() => classifyChunk(chunk(NBD_REPLY_TYPE.ERROR_OFFSET, 14), FLUSH, 0, 'structured'), protocolError(/does not apply/))
  assert.equal(classifyChunk(chunk(0x8003, 10), READ, 4096, 'structured'), 'error')
  assert.throws(() => classifyChunk(chunk(3, 0), READ, 4096, 'structured'), protocolError(/unknown or unexpected chunk type/))
})

test('error, hole and status payloads', () => {
  const err = Buffer.concat([Buffer.from('0000001c0004', 'hex'), Buffer.from('full')])
  assert.deepEqual(parseErrorChunk(NBD_REPLY_TYPE.ERROR, err), { error: 28, message: 'full', offset: undefined })
  assert.throws(() => parseErrorChunk(NBD_REPLY_TYPE.ERROR, Buffer.from('000000000000', 'hex')), protocolError(/error value 0/))
  assert.throws(() => parseErrorChunk(NBD_REPLY_TYPE.ERROR, Buffer.from('000000050009', 'hex')), protocolError(/runs past/))
  const errOffset = Buffer.from('00000005' + '0000' + '0000000000001000', 'hex')
  assert.deepEqual(parseErrorChunk(NBD_REPLY_TYPE.ERROR_OFFSET, errOffset), { error: 5, message: '', offset: 4096n })
  assert.deepEqual(parseOffsetHole(Buffer.from('0000000000010000' + '00010000', 'hex')), { offset: 65536n, size: 65536 })
  assert.throws(() => parseOffsetHole(Buffer.from('0000000000010000' + '00000000', 'hex')), protocolError(/hole size of 0/))

  const status = (extents: number[][]): Buffer => Buffer.concat([Buffer.from('00000001', 'hex'), ...extents.map(([l, f]) => {
    const b = Buffer.alloc(8); b.writeUInt32BE(l!, 0); b.writeUInt32BE(f!, 4); return b
  })])
  // nbdkit returns extents past the request: clamped.
  assert.deepEqual(parseBlockStatus(status([[32768, 3]]), false, 512, false), { contextId: 1, extents: [{ length: 512, flags: 3 }] })
  assert.deepEqual(parseBlockStatus(status([[100, 0], [500, 3]]), false, 512, false).extents, [{ length: 100, flags: 0 }, { length: 412, flags: 3 }])
  assert.throws(() => parseBlockStatus(status([[0, 0]]), false, 512, false), protocolError(/length 0/))
  assert.throws(() => parseBlockStatus(status([[512, 0], [1, 0]]), false, 512, false), protocolError(/past the end of the request/))
  assert.throws(() => parseBlockStatus(status([[100, 0], [100, 0]]), false, 512, true), protocolError(/REQ_ONE answered with 2/))
  assert.throws(() => parseBlockStatus(status([[1024, 0]]), false, 512, true), protocolError(/longer than the request/))
  const ext = Buffer.from('00000002' + '00000001' + '0000000000001000' + '0000000000000003', 'hex')
  assert.deepEqual(parseBlockStatus(ext, true, 8192, false), { contextId: 2, extents: [{ length: 4096, flags: 3 }] })
  assert.throws(() => parseBlockStatus(Buffer.from('00000002' + '00000002' + '0000000000001000' + '0000000000000003', 'hex'), true, 8192, false), protocolError(/says 2 descriptors but carries 1/))
  assert.throws(() => parseBlockStatus(Buffer.from('00000002' + '00000001' + '0000000000001000' + '0000000100000003', 'hex'), true, 8192, false), protocolError(/high 32 bits/))
})

test('READ reassembly: range, overlap, coverage, DF', () => {
  const a = new ReadAssembly(1000n, 300, false)
  assert.equal(a.addContent(1100n, 100, 'data'), 100)
  assert.equal(a.addContent(1000n, 100, 'hole'), 0)
  assert.equal(a.complete, false)
  // An overlap with the chunk just before is refused at once.
  assert.throws(() => a.addContent(1050n, 10, 'data'), protocolError(/overlaps an earlier chunk/))
  assert.throws(() => a.addContent(1250n, 51, 'data'), protocolError(/outside the request/))
  assert.throws(() => a.addContent(999n, 1, 'data'), protocolError(/outside the request/))
  a.addContent(1200n, 100, 'data')
  assert.equal(a.complete, true)

  // Out of order, an overlap with an older chunk is found by the one check at the end, even
  // when the byte count adds up.
  const o = new ReadAssembly(0n, 300, false)
  o.addContent(100n, 100, 'data')
  o.addContent(0n, 50, 'data')
  o.addContent(150n, 100, 'data')
  o.addContent(250n, 50, 'data')
  assert.equal(o.complete, false)
  assert.match(o.problem ?? '', /overlaps another/)

  // ERROR_OFFSET must lie inside the request; it may point into content that came first.
  const e = new ReadAssembly(0n, 100, false)
  e.addContent(0n, 100, 'data')
  e.addErrorOffset(50n)
  assert.throws(() => e.addErrorOffset(100n), protocolError(/outside/))

  const df = new ReadAssembly(0n, 100, true)
  df.addContent(0n, 50, 'data')
  assert.throws(() => df.addContent(50n, 50, 'data'), protocolError(/DF/))
})

test('READ reassembly: chunks are capped by the request size, and checking them is not quadratic', () => {
  const length = 1 << 20
  assert.equal(maxReadChunks(length), 64 + 2048)
  // Backwards, one byte every other byte: the worst order for an insertion sort.
  const a = new ReadAssembly(0n, length, false)
  for (let i = 0; i < maxReadChunks(length); i++) a.addContent(BigInt(length - 2 - 2 * i), 1, 'data')
  assert.throws(() => { a.addContent(1n, 1, 'data') }, protocolError(/more than 2112 chunks in the reply to a READ of 1048576 bytes/))
  assert.equal(a.complete, false)
  // A whole export's worth of 512-byte chunks in reverse order is fine.
  const b = new ReadAssembly(0n, length, false)
  for (let at = length - 512; at >= 0; at -= 512) b.addContent(BigInt(at), 512, 'data')
  assert.equal(b.complete, true)
  const c = new ReadAssembly(0n, 4096, false)
  for (let i = 0; i < 64; i++) c.addErrorOffset(BigInt(i))
  for (let i = 0; i < 8; i++) c.addContent(BigInt(i * 512), 512, 'data')
  assert.throws(() => { c.addErrorOffset(0n) }, protocolError(/more than 72 chunks/))
})

test('server error messages come out of the codec with control characters escaped', () => {
  const m = Buffer.from('disk\nforged line\x1b[2J')
  const p = Buffer.alloc(6 + m.length)
  p.writeUInt32BE(5, 0)
  p.writeUInt16BE(m.length, 4)
  m.copy(p, 6)
  assert.equal(parseErrorChunk(NBD_REPLY_TYPE.ERROR, p).message, 'disk\\nforged line\\x1b[2J')
})
