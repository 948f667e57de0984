/**
 * A scripted server breaks each strict-client rule (protocol.md §14) in turn. Every case must
 * end in a typed error within a bound, with every pending request rejected, no crash and no
 * unhandled rejection.
 */
import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import { NbdClient } from '../../src/index.ts'
import {
  NBD_CMD, NBD_CMD_FLAG, NBD_CLISERV_MAGIC, NBD_FLAG, NBD_INFO, NBD_INIT_MAGIC, NBD_OPT, NBD_REP, NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE
} from '../../src/protocol/constants.ts'
import { FakePeer, FakeServer, DEFAULT_FLAGS, type WireRequest } from '../helpers/fake-server.ts'
import { rejectsWithCode, within, handled } from '../helpers/assert.ts'

const servers: FakeServer[] = []
after(async () => { await Promise.all(servers.map((s) => s.close())) })

async function serve (script: (peer: FakePeer) => Promise<void>): Promise<FakeServer> {
  const server = await FakeServer.start(script)
  servers.push(server)
  return server
}

const fast = { handshakeTimeout: 2000, requestTimeout: 3000 }

/** Connects, sends `count` 4 KiB reads, and lets `script` answer after the handshake. */
async function pendingReads (count: number, script: (peer: FakePeer, requests: WireRequest[]) => Promise<void>, options = {}): Promise<{ client: NbdClient, results: Array<Promise<unknown>>, server: FakeServer }> {
  const server = await serve(async (peer) => {
    await peer.negotiate(options)
    const requests: WireRequest[] = []
    for (let i = 0; i < count; i++) requests.push(await peer.readRequest())
    await script(peer, requests)
  })
  const client = await NbdClient.connect(server.uri(), fast)
  const results = Array.from({ length: count }, (_, i) => handled(client.read(4096, i * 4096)))
  return { client, results, server }
}

async function allRejectWith (results: Array<Promise<unknown>>, code: string, message?: RegExp): Promise<void> {
  for (const r of results) await rejectsWithCode(r, code, 3000, message)
}

describe('handshake', () => {
  test('a greeting that is not NBD', async () => {
    const server = await serve(async (peer) => { peer.write(Buffer.from('HTTP/1.1 400 Bad Request\r\n\r\n')) })
    await rejectsWithCode(NbdClient.connect(server.uri(), fast), 'NBD_ERR_PROTOCOL', 3000, /not an NBD server/)
  })

  test('an unknown second magic', async () => {
    const server = await serve(async (peer) => {
      const g = Buffer.alloc(18)
      g.writeBigUInt64BE(NBD_INIT_MAGIC, 0)
      g.writeBigUInt64BE(0x1234n, 8)
      peer.write(g)
    })
    await rejectsWithCode(NbdClient.connect(server.uri(), fast), 'NBD_ERR_PROTOCOL', 3000, /unknown NBD greeting magic/)
  })

  test('an oldstyle server is refused by name', async () => {
    const server = await serve(async (peer) => {
      const g = Buffer.alloc(152)
      g.writeBigUInt64BE(NBD_INIT_MAGIC, 0)
      g.writeBigUInt64BE(NBD_CLISERV_MAGIC, 8)
      g.writeBigUInt64BE(1024n * 1024n, 16)
      g.writeUInt32BE(0x0503, 24)
      peer.write(g)
    })
    await rejectsWithCode(NbdClient.connect(server.uri(), fast), 'NBD_ERR_HANDSHAKE', 3000, /oldstyle/)
  })

  test('a truncated greeting', async () => {
    const server = await serve(async (peer) => { peer.write(Buffer.from('NBDMAG')); peer.end() })
    await rejectsWithCode(NbdClient.connect(server.uri(), fast), 'NBD_ERR_CONNECTION', 3000, /greeting \(6 of 16 bytes\)/)
  })

  test('a server that accepts but never greets hits the handshake timeout', async () => {
    const server = await serve(async (peer) => { await peer.closed() })
    const started = Date.now()
    await rejectsWithCode(NbdClient.connect(server.uri(), { handshakeTimeout: 300 }), 'NBD_ERR_TIMEOUT', 3000, /handshake within 300 ms/)
    assert.ok(Date.now() - started >= 290)
  })

  const optionCases: Array<[string, (peer: FakePeer, option: number) => void, string, RegExp]> = [
    ['wrong reply magic', (peer, option) => {
      const h = Buffer.alloc(20); h.writeUInt32BE(option, 8); h.writeUInt32BE(1, 12); peer.write(h)
    }, 'NBD_ERR_PROTOCOL', /bad option reply magic/],
    ['wrong option echo', (peer) => { peer.replyOption(NBD_OPT.LIST, NBD_REP.ACK) }, 'NBD_ERR_PROTOCOL', /answered NBD_OPT_LIST/],
    ['unknown non-error reply type', (peer, option) => { peer.replyOption(option, 77) }, 'NBD_ERR_PROTOCOL', /unexpected reply type/],
    ['ACK carrying data', (peer, option) => { peer.replyOption(option, NBD_REP.ACK, Buffer.from('xx')) }, 'NBD_ERR_PROTOCOL', /carries 2 bytes/],
    ['an oversized reply', (peer, option) => {
      const h = Buffer.alloc(20); h.writeBigUInt64BE(0x0003e889045565a9n, 0); h.writeUInt32BE(option, 8)
      h.writeUInt32BE(NBD_REP.ERR_UNSUP, 12); h.writeUInt32BE(0x7fffffff, 16); peer.write(h)
    }, 'NBD_ERR_PROTOCOL', /cap/],
    ['an error message that is not UTF-8', (peer, option) => { peer.replyOption(option, NBD_REP.ERR_UNSUP, Buffer.from([0xff, 0xfe])) }, 'NBD_ERR_PROTOCOL', /UTF-8/]
  ]
  for (const [name, misbehave, code, message] of optionCases) {
    test(`option reply: ${name}`, async () => {
      const server = await serve(async (peer) => {
        await peer.greet()
        const { option } = await peer.readOption()
        misbehave(peer, option)
      })
      await rejectsWithCode(NbdClient.connect(server.uri(), fast), code, 3000, message)
    })
  }

  test('NBD_REP_SERVER in answer to GO', async () => {
    const server = await serve((peer) => peer.negotiate({
      onOption: async (p, req) => {
        if (req.option !== NBD_OPT.GO) return false
        p.replyOption(NBD_OPT.GO, NBD_REP.SERVER, Buffer.from('00000000', 'hex'))
        return true
      }
    }))
    await rejectsWithCode(NbdClient.connect(server.uri(), fast), 'NBD_ERR_PROTOCOL', 3000, /unexpected NBD_REP_SERVER/)
  })

  const goCases: Array<[string, (peer: FakePeer) => void, string, RegExp]> = [
    ['ACK without NBD_INFO_EXPORT', (p) => { p.replyOption(NBD_OPT.GO, NBD_REP.ACK) }, 'NBD_ERR_PROTOCOL', /without NBD_INFO_EXPORT/],
    ['NBD_INFO_EXPORT of the wrong length', (p) => {
      p.replyOption(NBD_OPT.GO, NBD_REP.INFO, Buffer.concat([FakePeer.infoExport(1024n, DEFAULT_FLAGS), Buffer.alloc(124)]))
    }, 'NBD_ERR_PROTOCOL', /NBD_INFO_EXPORT is 136 bytes/],
    ['invalid block sizes', (p) => {
      const b = Buffer.alloc(14); b.writeUInt16BE(NBD_INFO.BLOCK_SIZE, 0); b.writeUInt32BE(3, 2); b.writeUInt32BE(4096, 6); b.writeUInt32BE(4096, 10)
      p.replyOption(NBD_OPT.GO, NBD_REP.INFO, b)
    }, 'NBD_ERR_PROTOCOL', /invalid NBD_INFO_BLOCK_SIZE/],
    ['conflicting NBD_INFO_EXPORT replies', (p) => {
      p.replyOption(NBD_OPT.GO, NBD_REP.INFO, FakePeer.infoExport(1024n, DEFAULT_FLAGS))
      p.replyOption(NBD_OPT.GO, NBD_REP.INFO, FakePeer.infoExport(2048n, DEFAULT_FLAGS))
      p.replyOption(NBD_OPT.GO, NBD_REP.ACK)
    }, 'NBD_ERR_PROTOCOL', /conflicting/],
    ['flags without HAS_FLAGS', (p) => {
      p.replyOption(NBD_OPT.GO, NBD_REP.INFO, FakePeer.infoExport(1024n, NBD_FLAG.SEND_FLUSH))
      p.replyOption(NBD_OPT.GO, NBD_REP.ACK)
    }, 'NBD_ERR_PROTOCOL', /HAS_FLAGS/],
    ['a size above 2^63 - 1', (p) => {
      p.replyOption(NBD_OPT.GO, NBD_REP.INFO, FakePeer.infoExport(0xffff_ffff_ffff_ffffn, DEFAULT_FLAGS))
      p.replyOption(NBD_OPT.GO, NBD_REP.ACK)
    }, 'NBD_ERR_PROTOCOL', /above 2\^63/],
    ['ERR_UNKNOWN (no such export)', (p) => { p.replyOption(NBD_OPT.GO, NBD_REP.ERR_UNKNOWN, Buffer.from('export "x" not present')) }, 'NBD_ERR_HANDSHAKE', /no export named "".*not present/],
    ['ERR_TLS_REQD', (p) => { p.replyOption(NBD_OPT.GO, NBD_REP.ERR_TLS_REQD) }, 'NBD_ERR_HANDSHAKE', /requires TLS/],
    ['an unknown error type', (p) => { p.replyOption(NBD_OPT.GO, 0x80000063, Buffer.from('odd')) }, 'NBD_ERR_HANDSHAKE', /reply type 0x80000063: odd/]
  ]
  for (const [name, misbehave, code, message] of goCases) {
    test(`GO: ${name}`, async () => {
      const server = await serve((peer) => peer.negotiate({
        onOption: async (p, req) => {
          if (req.option !== NBD_OPT.GO) return false
          misbehave(p)
          return true
        }
      }))
      await rejectsWithCode(NbdClient.connect(server.uri(), fast), code, 3000, message)
    })
  }

  test('ERR_SHUTDOWN: the client soft-disconnects with NBD_OPT_ABORT', async () => {
    let sawAbort = false
    const server = await serve(async (peer) => {
      await peer.greet()
      const first = await peer.readOption()
      peer.replyOption(first.option, NBD_REP.ERR_SHUTDOWN, Buffer.from('going down'))
      sawAbort = (await peer.readOption()).option === NBD_OPT.ABORT
      peer.replyOption(NBD_OPT.ABORT, NBD_REP.ACK)
    })
    await rejectsWithCode(NbdClient.connect(server.uri(), fast), 'NBD_ERR_HANDSHAKE', 3000, /shutting down/)
    assert.ok(sawAbort, 'NBD_OPT_ABORT was sent')
  })

  test('META_CONTEXT: one id for two names', async () => {
    const server = await serve((peer) => peer.negotiate({
      onOption: async (p, req) => {
        if (req.option !== NBD_OPT.SET_META_CONTEXT) return false
        p.replyOption(req.option, NBD_REP.META_CONTEXT, FakePeer.metaContext(1, 'base:allocation'))
        p.replyOption(req.option, NBD_REP.META_CONTEXT, FakePeer.metaContext(1, 'qemu:allocation-depth'))
        p.replyOption(req.option, NBD_REP.ACK)
        return true
      }
    }))
    await rejectsWithCode(NbdClient.connect(server.uri(), fast), 'NBD_ERR_PROTOCOL', 3000, /both "base:allocation" and "qemu:allocation-depth"/)
  })

  test('META_CONTEXT: the same id and name twice is tolerated (nbdkit 1.32)', async () => {
    const server = await serve((peer) => peer.negotiate({
      onOption: async (p, req) => {
        if (req.option !== NBD_OPT.SET_META_CONTEXT) return false
        p.replyOption(req.option, NBD_REP.META_CONTEXT, FakePeer.metaContext(1, 'base:allocation'))
        p.replyOption(req.option, NBD_REP.META_CONTEXT, FakePeer.metaContext(1, 'base:allocation'))
        p.replyOption(req.option, NBD_REP.ACK)
        return true
      }
    }))
    const client = await NbdClient.connect(server.uri(), fast)
    assert.deepEqual(client.metaContexts, ['base:allocation'])
    client.destroy()
  })

  test('GO unsupported: falls back to NBD_OPT_EXPORT_NAME', async () => {
    const server = await serve(async (peer) => {
      await peer.greet()
      for (;;) {
        const req = await peer.readOption()
        if (req.option === NBD_OPT.EXPORT_NAME) break
        peer.replyOption(req.option, NBD_REP.ERR_UNSUP)
      }
      const r = Buffer.alloc(10); r.writeBigUInt64BE(8192n, 0); r.writeUInt16BE(DEFAULT_FLAGS & ~NBD_FLAG.SEND_DF, 8)
      peer.write(r)
      const read = await peer.readRequest()
      peer.simpleReply(read.cookie, 0, Buffer.alloc(Number(read.length), 0x5a))
    })
    const client = await NbdClient.connect(server.uri(), fast)
    assert.equal(client.size, 8192)
    assert.equal(client.info.mode, 'simple')
    assert.deepEqual(await client.read(16, 0), Buffer.alloc(16, 0x5a))
    client.destroy()
  })

  test('non-fixed newstyle: EXPORT_NAME with the 124 zero bytes', async () => {
    const server = await serve(async (peer) => {
      assert.equal(await peer.greet(0), 0, 'client flags must be 0 for a non-fixed server')
      const req = await peer.readOption()
      assert.equal(req.option, NBD_OPT.EXPORT_NAME)
      assert.equal(req.data.toString(), 'exp')
      const r = Buffer.alloc(134); r.writeBigUInt64BE(4096n, 0); r.writeUInt16BE(NBD_FLAG.HAS_FLAGS | NBD_FLAG.READ_ONLY, 8)
      peer.write(r)
    })
    const client = await NbdClient.connect(server.uri('exp'), fast)
    assert.equal(client.info.protocol, 'newstyle')
    assert.equal(client.size, 4096)
    await rejectsWithCode(client.write(Buffer.alloc(512), 0), 'NBD_ERR_NOT_SUPPORTED', 1000, /read-only/)
    client.destroy()
  })

  test('EXPORT_NAME refused by closing', async () => {
    const server = await serve(async (peer) => {
      await peer.greet()
      for (;;) {
        const req = await peer.readOption()
        if (req.option === NBD_OPT.EXPORT_NAME) { peer.end(); return }
        peer.replyOption(req.option, NBD_REP.ERR_UNSUP)
      }
    })
    await rejectsWithCode(NbdClient.connect(server.uri('nope'), fast), 'NBD_ERR_HANDSHAKE', 3000, /closed the connection instead of opening export "nope"/)
  })
})

describe('transmission', () => {
  test('bad reply magic poisons the connection: every pending request fails at once', async () => {
    const { client, results } = await pendingReads(4, async (peer) => {
      peer.write(Buffer.from('deadbeef00000000000000000000000000000000', 'hex'))
    })
    await allRejectWith(results, 'NBD_ERR_PROTOCOL', /bad reply magic 0xdeadbeef/)
    assert.equal(client.state, 'QUIT')
    await rejectsWithCode(client.read(512, 0), 'NBD_ERR_PROTOCOL', 1000)
    client.destroy()
  })

  test('a reply for a cookie not in flight', async () => {
    const { client, results } = await pendingReads(3, async (peer) => { peer.simpleReply(0xdead_beefn, 0) })
    await allRejectWith(results, 'NBD_ERR_PROTOCOL', /cookie 3735928559, which is not in flight/)
    client.destroy()
  })

  test('a second reply after DONE', async () => {
    const server = await serve(async (peer) => {
      await peer.negotiate()
      const first = await peer.readRequest()
      peer.offsetData(first, first.offset, Buffer.alloc(512, 1))
      const second = await peer.readRequest()
      peer.offsetData(first, first.offset, Buffer.alloc(512, 1))
      peer.offsetData(second, second.offset, Buffer.alloc(512, 1))
    })
    const client = await NbdClient.connect(server.uri(), fast)
    assert.deepEqual(await client.read(512, 0), Buffer.alloc(512, 1))
    await rejectsWithCode(client.read(512, 512), 'NBD_ERR_PROTOCOL', 3000, /not in flight/)
    client.destroy()
  })

  test('a structured chunk when structured replies were not negotiated', async () => {
    const { client, results } = await pendingReads(2, async (peer, reqs) => {
      peer.offsetData(reqs[0]!, reqs[0]!.offset, Buffer.alloc(4096))
    }, { structured: false })
    await allRejectWith(results, 'NBD_ERR_PROTOCOL', /structured reply chunk, but the connection uses simple replies/)
    client.destroy()
  })

  test('a simple reply to READ after structured replies', async () => {
    const { client, results } = await pendingReads(2, async (peer, reqs) => {
      peer.simpleReply(reqs[1]!.cookie, 0, Buffer.alloc(4096))
    })
    await allRejectWith(results, 'NBD_ERR_PROTOCOL', /simple reply to READ/)
    client.destroy()
  })

  const chunkCases: Array<[string, (peer: FakePeer, req: WireRequest) => void, RegExp]> = [
    ['NONE without DONE', (p, r) => { p.chunk(r.cookie, 0, NBD_REPLY_TYPE.NONE) }, /NONE must carry the DONE flag/],
    ['OFFSET_DATA before the request', (p, r) => { p.offsetData(r, r.offset - 512n, Buffer.alloc(512)) }, /outside the request/],
    ['OFFSET_DATA past the request', (p, r) => { p.offsetData(r, r.offset + 4000n, Buffer.alloc(512)) }, /outside the request/],
    ['OFFSET_DATA larger than the request', (p, r) => { p.offsetData(r, r.offset, Buffer.alloc(8192)) }, /more data than the 4096 bytes/],
    ['overlapping OFFSET_DATA chunks', (p, r) => {
      p.offsetData(r, r.offset, Buffer.alloc(2048), false)
      p.offsetData(r, r.offset + 1024n, Buffer.alloc(2048))
    }, /overlaps an earlier chunk/],
    ['DONE with a gap and no error', (p, r) => { p.offsetData(r, r.offset, Buffer.alloc(2048)) }, /without data for every byte/],
    ['OFFSET_HOLE of the wrong length', (p, r) => { p.chunk(r.cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE.OFFSET_HOLE, Buffer.alloc(16)) }, /exactly 12/],
    ['OFFSET_HOLE of size 0', (p, r) => { p.offsetHole(r, r.offset, 0) }, /hole size of 0/],
    ['ERROR with error 0', (p, r) => { p.errorChunk(r, 0) }, /error value 0/],
    ['ERROR with a message longer than the chunk', (p, r) => {
      const b = Buffer.alloc(10); b.writeUInt32BE(5, 0); b.writeUInt16BE(400, 4)
      p.chunk(r.cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE.ERROR, b)
    }, /runs past/],
    ['ERROR_OFFSET outside the request', (p, r) => {
      const b = Buffer.alloc(14); b.writeUInt32BE(5, 0); b.writeBigUInt64BE(r.offset + 99999n, 6)
      p.chunk(r.cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE.ERROR_OFFSET, b)
    }, /ERROR_OFFSET at \d+ lies outside/],
    ['an unknown non-error chunk type', (p, r) => { p.chunk(r.cookie, NBD_REPLY_FLAG_DONE, 3, Buffer.alloc(4)) }, /unknown or unexpected chunk type/],
    ['a status chunk answering READ', (p, r) => { p.blockStatus(r, 1, [[4096, 0]]) }, /only answer BLOCK_STATUS/],
    ['a chunk length meant to make us allocate 4 GiB', (p, r) => {
      const h = Buffer.from('668e33ef000100010000000000000000ffffffff', 'hex'); h.writeBigUInt64BE(r.cookie, 8); p.write(h)
    }, /more data than/]
  ]
  for (const [name, misbehave, message] of chunkCases) {
    test(`READ reply: ${name}`, async () => {
      const { client, results } = await pendingReads(3, async (peer, reqs) => { misbehave(peer, reqs[1]!) })
      await allRejectWith(results, 'NBD_ERR_PROTOCOL', message)
      assert.equal(client.state, 'QUIT')
      client.destroy()
    })
  }

  test('ERROR_OFFSET inside the request is a server error for that request only', async () => {
    const server = await serve(async (peer) => {
      await peer.negotiate()
      const r = await peer.readRequest()
      peer.offsetData(r, r.offset, Buffer.alloc(1024), false)
      const b = Buffer.alloc(14 + 3); b.writeUInt32BE(5, 0); b.writeUInt16BE(3, 4); b.write('bad', 6); b.writeBigUInt64BE(r.offset + 2048n, 9)
      peer.chunk(r.cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE.ERROR_OFFSET, b)
      const next = await peer.readRequest()
      peer.offsetData(next, next.offset, Buffer.alloc(4096, 2))
    })
    const client = await NbdClient.connect(server.uri(), fast)
    const err = await rejectsWithCode(client.read(4096, 0), 'NBD_ERR_SERVER', 3000, /EIO: bad \(at offset 2048\)/)
    assert.equal((err as unknown as { errno: string }).errno, 'EIO')
    assert.deepEqual(await client.read(4096, 4096), Buffer.alloc(4096, 2))
    client.destroy()
  })

  test('ERROR_OFFSET inside an earlier data chunk (content first, as the spec orders) fails that READ only', async () => {
    const server = await serve(async (peer) => {
      await peer.negotiate()
      const r = await peer.readRequest()
      // Part of the data, not DONE; then the error for an offset that data covers.
      peer.offsetData(r, r.offset, Buffer.alloc(2048, 9), false)
      const b = Buffer.alloc(14 + 3); b.writeUInt32BE(5, 0); b.writeUInt16BE(3, 4); b.write('bad', 6); b.writeBigUInt64BE(r.offset + 100n, 9)
      peer.chunk(r.cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE.ERROR_OFFSET, b)
      const next = await peer.readRequest()
      peer.offsetData(next, next.offset, Buffer.alloc(4096, 2))
    })
    const client = await NbdClient.connect(server.uri(), fast)
    await rejectsWithCode(client.read(4096, 0), 'NBD_ERR_SERVER', 3000, /EIO: bad \(at offset 100\)/)
    assert.equal(client.state, 'CONNECTED')
    assert.deepEqual(await client.read(4096, 4096), Buffer.alloc(4096, 2))
    client.destroy()
  })

  test('error values outside the NBD set become EINVAL; the connection lives', async () => {
    const server = await serve(async (peer) => {
      await peer.negotiate()
      for (const value of [2, 13, 999]) {
        const r = await peer.readRequest()
        peer.errorChunk(r, value, `value ${value}`)
      }
      const r = await peer.readRequest()
      peer.simpleReply(r.cookie, 0)
    })
    const client = await NbdClient.connect(server.uri(), fast)
    for (const value of [2, 13, 999]) {
      const err = await rejectsWithCode(client.read(512, 0), 'NBD_ERR_SERVER', 3000, new RegExp(`value ${value}`))
      assert.equal((err as unknown as { errno: string }).errno, 'EINVAL')
    }
    await within(client.flush(), 3000)
    client.destroy()
  })

  test('an unknown error chunk type fails the request, not the connection', async () => {
    const server = await serve(async (peer) => {
      await peer.negotiate()
      const r = await peer.readRequest()
      const b = Buffer.alloc(10); b.writeUInt32BE(95, 0); b.writeUInt16BE(0, 4)
      peer.chunk(r.cookie, NBD_REPLY_FLAG_DONE, 0x8003, b)
      const r2 = await peer.readRequest()
      peer.simpleReply(r2.cookie, 0)
    })
    const client = await NbdClient.connect(server.uri(), fast)
    const err = await rejectsWithCode(client.trim(4096, 0), 'NBD_ERR_SERVER', 3000)
    assert.equal((err as unknown as { errno: string }).errno, 'ENOTSUP')
    await within(client.flush(), 3000)
    client.destroy()
  })

  test('ESHUTDOWN is a transport event, not a data error', async () => {
    const server = await serve(async (peer) => {
      await peer.negotiate()
      const r = await peer.readRequest()
      peer.errorChunk(r, 108, 'shutting down')
      // The client finishes what is in flight, then sends NBD_CMD_DISC.
      const disc = await peer.readRequest()
      assert.equal(disc.type, NBD_CMD.DISC)
      peer.end()
    })
    const client = await NbdClient.connect(server.uri(), fast)
    await rejectsWithCode(client.read(512, 0), 'NBD_ERR_CONNECTION', 3000, /shutting down \(ESHUTDOWN\)/)
    await new Promise((resolve) => setTimeout(resolve, 100))
    assert.deepEqual(server.errors, [])
    client.destroy()
  })

  test('EOF in the middle of a reply header', async () => {
    const { client, results } = await pendingReads(3, async (peer, reqs) => {
      const h = Buffer.from('668e33ef0001000100000000', 'hex')
      peer.write(h)
      void reqs
      peer.end()
    })
    await allRejectWith(results, 'NBD_ERR_CONNECTION', /closed the connection/)
    client.destroy()
  })

  test('EOF in the middle of a payload', async () => {
    const { client, results } = await pendingReads(3, async (peer, reqs) => {
      const r = reqs[0]!
      const p = Buffer.alloc(8 + 1000); p.writeBigUInt64BE(r.offset, 0)
      const h = Buffer.alloc(20); h.writeUInt32BE(0x668e33ef, 0); h.writeUInt16BE(1, 4); h.writeUInt16BE(1, 6)
      h.writeBigUInt64BE(r.cookie, 8); h.writeUInt32BE(8 + 4096, 16)
      peer.write(h, p)
      peer.end()
    })
    await allRejectWith(results, 'NBD_ERR_CONNECTION', /OFFSET_DATA payload \(1000 of 4096 bytes\)/)
    client.destroy()
  })

  test('a silent server: requests time out and fail, nothing hangs', async () => {
    const server = await serve(async (peer) => { await peer.negotiate(); await peer.closed() })
    const client = await NbdClient.connect(server.uri(), { requestTimeout: 300 })
    await rejectsWithCode(client.read(512, 0), 'NBD_ERR_TIMEOUT', 3000, /no reply to NBD_CMD_READ within 300 ms/)
    client.destroy()
  })

  test('bytes after NBD_CMD_DISC do not disturb close()', async () => {
    const server = await serve(async (peer) => {
      await peer.negotiate()
      const disc = await peer.readRequest()
      assert.equal(disc.type, NBD_CMD.DISC)
      peer.write(Buffer.alloc(64, 0xee))
      peer.end()
    })
    const client = await NbdClient.connect(server.uri(), fast)
    await within(client.close(), 3000)
    assert.deepEqual(server.errors, [])
  })

  test('replies in any order reach their own callers; chunks of different replies interleave', async () => {
    const server = await serve(async (peer) => {
      await peer.negotiate()
      const reqs: WireRequest[] = []
      for (let i = 0; i < 4; i++) reqs.push(await peer.readRequest())
      // Interleave: first halves in reverse order, then second halves.
      for (const r of [...reqs].reverse()) peer.offsetData(r, r.offset, Buffer.alloc(2048, Number(r.offset / 4096n) + 1), false)
      for (const r of reqs) peer.offsetHole(r, r.offset + 2048n, 2048)
    })
    const client = await NbdClient.connect(server.uri(), fast)
    const got = await within(Promise.all([0, 1, 2, 3].map((i) => client.read(4096, i * 4096))), 3000)
    got.forEach((buf, i) => {
      assert.deepEqual(buf.subarray(0, 2048), Buffer.alloc(2048, i + 1))
      assert.deepEqual(buf.subarray(2048), Buffer.alloc(2048))
    })
    client.destroy()
  })
})

describe('block status', () => {
  async function statusCase (script: (peer: FakePeer, req: WireRequest) => void, contexts: Record<string, number> = { 'base:allocation': 1 }): Promise<{ client: NbdClient, result: Promise<unknown> }> {
    const server = await serve(async (peer) => {
      await peer.negotiate({ contexts })
      const r = await peer.readRequest()
      script(peer, r)
      const next = await peer.readRequest()
      peer.simpleReply(next.cookie, 0)
    })
    const client = await NbdClient.connect(server.uri(), { ...fast, metaContexts: Object.keys(contexts) })
    return { client, result: client.blockStatus(65536, 0) }
  }

  test('an unselected context id', async () => {
    const { client, result } = await statusCase((p, r) => { p.blockStatus(r, 9, [[65536, 0]]) })
    await rejectsWithCode(result, 'NBD_ERR_PROTOCOL', 3000, /id 9, which was not selected/)
    client.destroy()
  })

  test('two chunks for one context', async () => {
    const { client, result } = await statusCase((p, r) => { p.blockStatus(r, 1, [[4096, 0]], false); p.blockStatus(r, 1, [[4096, 0]]) })
    await rejectsWithCode(result, 'NBD_ERR_PROTOCOL', 3000, /two BLOCK_STATUS chunks/)
    client.destroy()
  })

  test('an extent of length 0', async () => {
    const { client, result } = await statusCase((p, r) => { p.blockStatus(r, 1, [[0, 0]]) })
    await rejectsWithCode(result, 'NBD_ERR_PROTOCOL', 3000, /length 0/)
    client.destroy()
  })

  test('extents continuing past the request', async () => {
    const { client, result } = await statusCase((p, r) => { p.blockStatus(r, 1, [[65536, 0], [4096, 3]]) })
    await rejectsWithCode(result, 'NBD_ERR_PROTOCOL', 3000, /continue past the end/)
    client.destroy()
  })

  test('a missing context fails the request, not the connection', async () => {
    const { client, result } = await statusCase((p, r) => { p.blockStatus(r, 1, [[65536, 0]]) }, { 'base:allocation': 1, 'qemu:dirty-bitmap:b0': 2 })
    await rejectsWithCode(result, 'NBD_ERR_PROTOCOL', 3000, /covers 1 of the 2 selected/)
    assert.equal(client.state, 'CONNECTED')
    await within(client.flush(), 3000)
    client.destroy()
  })

  test('a last extent past the request is clamped', async () => {
    const { client, result } = await statusCase((p, r) => { p.blockStatus(r, 1, [[4096, 0], [1 << 30, 3]]) })
    assert.deepEqual(await result, new Map([['base:allocation', [{ offset: 0, length: 4096, flags: 0 }, { offset: 4096, length: 61440, flags: 3 }]]]))
    client.destroy()
  })
})

describe('extended headers', () => {
  test('reads, writes and block status with 32-byte headers', async () => {
    const seen: WireRequest[] = []
    const server = await serve(async (peer) => {
      await peer.negotiate({ extended: true, size: 1n << 20n })
      for (;;) {
        const r = await peer.readRequest()
        seen.push(r)
        if (r.type === NBD_CMD.DISC) { peer.end(); return }
        if (r.type === NBD_CMD.READ) peer.offsetData(r, r.offset, Buffer.alloc(Number(r.length), 7))
        else if (r.type === NBD_CMD.BLOCK_STATUS) peer.blockStatus(r, 1, [[4096, 0], [4096, 3]])
        else peer.chunk(r.cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE.NONE, Buffer.alloc(0), r.offset)
      }
    })
    const client = await NbdClient.connect(server.uri(), fast)
    assert.equal(client.info.mode, 'extended')
    assert.deepEqual(await client.read(100, 4096), Buffer.alloc(100, 7))
    await client.write(Buffer.alloc(512, 1), 8192)
    assert.deepEqual((await client.blockStatus(8192, 0)).get('base:allocation'), [{ offset: 0, length: 4096, flags: 0 }, { offset: 4096, length: 4096, flags: 3 }])
    await client.close()
    const write = seen.find((r) => r.type === NBD_CMD.WRITE)!
    assert.equal(write.flags & NBD_CMD_FLAG.PAYLOAD_LEN, NBD_CMD_FLAG.PAYLOAD_LEN, 'WRITE carries PAYLOAD_LEN')
    assert.equal(write.length, 512n)
    assert.deepEqual(write.payload, Buffer.alloc(512, 1))
  })

  const extCases: Array<[string, (peer: FakePeer, r: WireRequest) => void, RegExp]> = [
    ['a reply offset that is not the request offset', (p, r) => {
      const payload = Buffer.alloc(8 + 4096); payload.writeBigUInt64BE(r.offset, 0)
      p.chunk(r.cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE.OFFSET_DATA, payload, r.offset + 1n)
    }, /answers a request at/],
    ['a simple reply', (p, r) => { p.simpleReply(r.cookie, 0) }, /simple reply after extended headers/],
    ['a compact structured chunk', (p, r) => {
      p.extended = false; p.offsetData(r, r.offset, Buffer.alloc(4096))
    }, /structured reply chunk, but the connection uses extended replies/]
  ]
  for (const [name, misbehave, message] of extCases) {
    test(`extended mode: ${name}`, async () => {
      const { client, results } = await pendingReads(2, async (peer, reqs) => { misbehave(peer, reqs[0]!) }, { extended: true })
      await allRejectWith(results, 'NBD_ERR_PROTOCOL', message)
      client.destroy()
    })
  }
})

test('no scripted server failed', () => {
  for (const s of servers) assert.deepEqual(s.errors, [])
})

describe('a reply before its request was sent whole', () => {
  // A server may answer a write before it has read the write's payload (the spec does not
  // forbid it). Our send of that payload then waits for the socket; if the server closes now,
  // the reply's own payload is still buffered and unread: it must never be parsed as the next
  // header (that would be a protocol error, and the client would quit instead of reconnecting).
  test('an ERROR chunk for a write still being sent, then a close: a connection loss, not a protocol error', async () => {
    const server = await serve(async (peer) => {
      await peer.negotiate({ size: 64n * 1024n * 1024n })
      const read = await peer.read(28)
      const write = await peer.read(28)
      const cookie = write.readBigUInt64BE(8)
      void read
      peer.errorChunk({ flags: 0, type: NBD_CMD.WRITE, cookie, offset: 0n, length: 0n, payload: undefined }, 5, 'refused before reading it')
      await new Promise((resolve) => setTimeout(resolve, 200))
      peer.destroy()
    })
    const client = await NbdClient.connect(server.uri(), { ...fast, reconnectDelay: 0 })
    // A READ keeps receiveReplies() running; the WRITE is bigger than the socket takes at once.
    const reading = handled(client.read(4096, 0))
    const writing = handled(client.write(Buffer.alloc(16 * 1024 * 1024, 1), 1024 * 1024))
    await rejectsWithCode(writing, 'NBD_ERR_CONNECTION', 5000)
    await rejectsWithCode(reading, 'NBD_ERR_CONNECTION', 5000)
    assert.notEqual(client.state, 'QUIT')
    client.destroy()
  })
})
