/**
 * A hostile server: replies without end during the handshake (exports, meta contexts),
 * a READ answered in thousands of one-byte chunks sent backwards, and strings (descriptions,
 * export names, error messages) made to forge lines or drive the terminal. Each must end in a
 * bounded error with bounded memory, and nothing it sends reaches a terminal raw.
 */
import assert from 'node:assert/strict'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { after, test } from 'node:test'
import { NbdClient } from '../../src/index.ts'
import { NBD_INFO, NBD_OPT, NBD_REP, NBD_REP_MAGIC } from '../../src/protocol/constants.ts'
import { createLogger } from '../../src/cli/logger.ts'
import { rejectsWithCode } from '../helpers/assert.ts'
import { nbdts } from '../helpers/cli.ts'
import { FakePeer, FakeServer } from '../helpers/fake-server.ts'
import { tempDir } from '../helpers/servers.ts'

const fakes: FakeServer[] = []
after(async () => { await Promise.all(fakes.map((f) => f.close())) })

async function serve (script: (peer: FakePeer) => Promise<void>): Promise<FakeServer> {
  const fake = await FakeServer.start(script)
  fakes.push(fake)
  return fake
}

function reply (option: number, type: number, data: Buffer): Buffer {
  const h = Buffer.alloc(20)
  h.writeBigUInt64BE(NBD_REP_MAGIC, 0)
  h.writeUInt32BE(option, 8)
  h.writeUInt32BE(type, 12)
  h.writeUInt32BE(data.length, 16)
  return Buffer.concat([h, data])
}

/** Writes `next()` replies as fast as the client takes them, until it hangs up. */
async function flood (peer: FakePeer, next: (i: number) => Buffer): Promise<void> {
  const socket = peer.socket
  for (let i = 0; !socket.destroyed && socket.writable; i++) {
    // Batches: the kernel takes them, and the client's reader has to keep up.
    const batch = Buffer.concat(Array.from({ length: 64 }, (_, j) => next(i * 64 + j)))
    if (!socket.write(batch)) {
      await Promise.race([once(socket, 'drain'), once(socket, 'close')])
    }
  }
}

const serverReply = (name: string, description = ''): Buffer => {
  const n = Buffer.from(name)
  const b = Buffer.alloc(4 + n.length)
  b.writeUInt32BE(n.length, 0)
  n.copy(b, 4)
  return Buffer.concat([b, Buffer.from(description)])
}

/** Runs `attack` and reports how much the heap grew meanwhile (the fake server is in this process too). */
async function heapGrowth (attack: () => Promise<void>): Promise<number> {
  const before = process.memoryUsage().heapUsed
  let peak = before
  const sampler = setInterval(() => { peak = Math.max(peak, process.memoryUsage().heapUsed) }, 5)
  try {
    await attack()
  } finally {
    clearInterval(sampler)
  }
  return Math.max(peak, process.memoryUsage().heapUsed) - before
}

const MiB = 1024 * 1024

test('NBD_OPT_LIST: endless NBD_REP_SERVER replies stop at the count cap, and at the byte cap', async () => {
  const small = await serve(async (peer) => {
    await peer.greet()
    await peer.readOption() // STRUCTURED_REPLY
    peer.replyOption(NBD_OPT.STRUCTURED_REPLY, NBD_REP.ACK)
    await peer.readOption() // LIST
    await flood(peer, (i) => reply(NBD_OPT.LIST, NBD_REP.SERVER, serverReply(`e${i}`)))
  })
  const grew = await heapGrowth(async () => {
    await rejectsWithCode(NbdClient.list(small.uri(), { handshakeTimeout: 5000 }), 'NBD_ERR_PROTOCOL', 10_000,
      /more than 4096 replies or 4194304 bytes in answer to NBD_OPT_LIST/)
  })
  assert.ok(grew < 64 * MiB, `heap grew ${grew} bytes`)

  const big = await serve(async (peer) => {
    await peer.greet()
    await peer.readOption()
    peer.replyOption(NBD_OPT.STRUCTURED_REPLY, NBD_REP.ACK)
    await peer.readOption()
    await flood(peer, (i) => reply(NBD_OPT.LIST, NBD_REP.SERVER, serverReply(`${i}`.padEnd(4000, 'x'), 'y'.repeat(4000))))
  })
  const grewBig = await heapGrowth(async () => {
    await rejectsWithCode(NbdClient.list(big.uri(), { handshakeTimeout: 5000 }), 'NBD_ERR_PROTOCOL', 10_000, /in answer to NBD_OPT_LIST/)
  })
  assert.ok(grewBig < 96 * MiB, `heap grew ${grewBig} bytes`)
})

test('META_CONTEXT: endless LIST replies (distinct names) and endless SET replies (one name again) are capped', async () => {
  const list = await serve(async (peer) => {
    await peer.negotiate({
      onOption: async (p, req) => {
        if (req.option !== NBD_OPT.LIST_META_CONTEXT) return false
        await flood(p, (i) => reply(req.option, NBD_REP.META_CONTEXT, FakePeer.metaContext(0, `qemu:dirty-bitmap:b${i}`)))
        return true
      }
    })
  })
  const grew = await heapGrowth(async () => {
    await rejectsWithCode(NbdClient.connect(list.uri(), { listContexts: true, handshakeTimeout: 5000 }), 'NBD_ERR_PROTOCOL', 10_000,
      /more than 1024 replies or 1048576 bytes in answer to NBD_OPT_LIST_META_CONTEXT/)
  })
  assert.ok(grew < 64 * MiB, `heap grew ${grew} bytes`)

  const set = await serve(async (peer) => {
    await peer.negotiate({
      onOption: async (p, req) => {
        if (req.option !== NBD_OPT.SET_META_CONTEXT) return false
        await flood(p, () => reply(req.option, NBD_REP.META_CONTEXT, FakePeer.metaContext(1, 'base:allocation')))
        return true
      }
    })
  })
  await rejectsWithCode(NbdClient.connect(set.uri(), { handshakeTimeout: 5000 }), 'NBD_ERR_PROTOCOL', 10_000, /in answer to NBD_OPT_SET_META_CONTEXT/)
})

test('a READ answered in one-byte chunks, backwards, hits the chunk cap (linear work, bounded bookkeeping)', async () => {
  const length = 256 * 1024
  const server = await serve(async (peer) => {
    await peer.negotiate()
    const r = await peer.readRequest()
    const socket = peer.socket
    // Every other byte, from the end: never mergeable, the worst order for a sorted insert.
    for (let at = length - 2; at >= 0 && socket.writable; at -= 2 * 256) {
      const parts: Buffer[] = []
      for (let k = 0; k < 256 && at - 2 * k >= 0; k++) {
        const p = Buffer.alloc(9)
        p.writeBigUInt64BE(r.offset + BigInt(at - 2 * k), 0)
        const h = Buffer.alloc(20)
        h.writeUInt32BE(0x668e33ef, 0)
        h.writeUInt16BE(1, 6)
        h.writeBigUInt64BE(r.cookie, 8)
        h.writeUInt32BE(9, 16)
        parts.push(h, p)
      }
      if (!socket.write(Buffer.concat(parts))) await Promise.race([once(socket, 'drain'), once(socket, 'close')])
    }
    await peer.closed()
  })
  const client = await NbdClient.connect(server.uri(), { handshakeTimeout: 5000, requestTimeout: 20_000 })
  await rejectsWithCode(client.read(length, 0), 'NBD_ERR_PROTOCOL', 20_000, /more than 576 chunks in the reply to a READ of 262144 bytes/)
  client.destroy()
})

const HOSTILE = 'disk\n2024-01-01T00:00:00.000Z nbdts[1] info: forged\x1b[2J\u202e'

test('nbdts info prints what the server chose with its control characters escaped', async () => {
  const server = await serve(async (peer) => {
    await peer.negotiate({
      onOption: async (p, req) => {
        if (req.option !== NBD_OPT.GO && req.option !== NBD_OPT.INFO) return false
        const d = Buffer.from(HOSTILE)
        const info = Buffer.alloc(2 + d.length)
        info.writeUInt16BE(NBD_INFO.DESCRIPTION, 0)
        d.copy(info, 2)
        p.replyOption(req.option, NBD_REP.INFO, info)
        p.replyOption(req.option, NBD_REP.INFO, FakePeer.infoExport(1024n * 1024n, 1))
        p.replyOption(req.option, NBD_REP.ACK)
        return true
      }
    })
    await peer.closed()
  })
  const r = await nbdts(['info', server.uri()])
  assert.equal(r.code, 0, r.stderr)
  assert.ok(!/[\x00-\x08\x0b-\x1f\x7f\u202e]/.test(r.stdout), `no raw control character: ${JSON.stringify(r.stdout)}`)
  assert.match(r.stdout, /\tdescription: disk\\n2024-01-01T00:00:00\.000Z nbdts\[1\] info: forged\\x1b\[2J\\u202e\n/)
  assert.ok(!r.stdout.split('\n').some((line) => line.startsWith('2024-01-01')), 'no forged line')
})

test('a server error message with a newline stays one log line', async () => {
  const file = path.join(tempDir(), 'daemon.log')
  const log = createLogger('info', file)
  log('warn', `read failed: EIO: ${HOSTILE}`)
  log('info', 'next event')
  const lines = readFileSync(file, 'utf8').split('\n').filter((l) => l !== '')
  assert.equal(lines.length, 2)
  assert.match(lines[0]!, / warn: read failed: EIO: disk\\n2024-01-01T00:00:00\.000Z nbdts\[1\] info: forged\\x1b\[2J\\u202e$/)
})
