/**
 * INTERRUPT without the kernel: the file system against a stand-in channel and client, so a
 * READ can be interrupted at will (the real kernel only interrupts synchronous requests, which
 * mount.test.ts covers with fallocate on a stalled server).
 */
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import '../helpers/assert.ts'
import type { NbdClient } from '../../src/client/nbd-client.ts'
import { FUSE_OP } from '../../src/fuse/abi.ts'
import { fuseRequest } from '../helpers/fuse-requests.ts'
import type { FuseChannel } from '../../src/fuse/channel.ts'
import { ExportFileSystem } from '../../src/fuse/file-system.ts'

const EINTR = -4
const EAGAIN = -11

interface Reply { unique: number, error: number, bytes: number }

function rig (): { fs: ExportFileSystem, replies: Reply[], released: number[], finish: () => void, reads: Buffer[] } {
  const replies: Reply[] = []
  const released: number[] = []
  const reads: Buffer[] = []
  let finish!: () => void
  const gate = new Promise<void>((resolve) => { finish = resolve })
  const client = {
    sizeBigInt: 1n << 20n,
    metaContexts: [],
    readInto: async (buffer: Buffer) => {
      reads.push(buffer)
      await gate
      buffer.fill(0x5a)
    }
  }
  const channel = {
    reply: (unique: number, error: number, ...parts: Buffer[]) => { replies.push({ unique, error, bytes: parts.reduce((n, p) => n + p.length, 0) }) },
    replyData: (unique: number, data: Buffer, done: () => void) => { replies.push({ unique, error: 0, bytes: data.length }); done() },
    release: (slot: number) => { released.push(slot) }
  }
  const fs = new ExportFileSystem(channel as unknown as FuseChannel, {
    client: client as unknown as NbdClient, layout: { kind: 'file' }, readonly: false, access: { uid: 0, gid: 0, mode: 0o600 }, maxWrite: 1 << 20, log: () => {}
  })
  return { fs, replies, released, finish, reads }
}


function readIn (offset: number, size: number): Buffer {
  const b = Buffer.alloc(40)
  b.writeBigUInt64LE(BigInt(offset), 8)
  b.writeUInt32LE(size, 16)
  return b
}

function interruptIn (target: number): Buffer {
  const b = Buffer.alloc(8)
  b.writeBigUInt64LE(BigInt(target))
  return b
}

test('an interrupted READ is answered EINTR at once; its late data is dropped, its buffer kept until then', async () => {
  const { fs, replies, finish, reads } = rig()
  fs.handle(fuseRequest(FUSE_OP.READ, 7, readIn(0, 4096)), 0)
  await sleep(5)
  assert.equal(reads.length, 1, 'the NBD read is under way')
  assert.equal(fs.stats.inFlight, 1)
  fs.handle(fuseRequest(FUSE_OP.INTERRUPT, 8, interruptIn(7)), 1)
  assert.deepEqual(replies, [{ unique: 7, error: EINTR, bytes: 0 }], 'EINTR for the read, nothing for the INTERRUPT itself')
  assert.equal(fs.stats.interrupted, 1)
  // A second interrupt for it: already answered, so EAGAIN (the kernel's protocol).
  fs.handle(fuseRequest(FUSE_OP.INTERRUPT, 9, interruptIn(7)), 2)
  assert.deepEqual(replies[1], { unique: 9, error: EAGAIN, bytes: 0 })
  finish()
  await fs.idle()
  assert.equal(replies.length, 2, 'no reply when the NBD read finishes later')
  assert.equal(fs.stats.inFlight, 0)
})

test('an INTERRUPT for a request not in flight gets EAGAIN; other reads are answered normally', async () => {
  const { fs, replies, finish } = rig()
  fs.handle(fuseRequest(FUSE_OP.INTERRUPT, 3, interruptIn(99)), 0)
  assert.deepEqual(replies, [{ unique: 3, error: EAGAIN, bytes: 0 }])
  fs.handle(fuseRequest(FUSE_OP.READ, 4, readIn(4096, 8192)), 1)
  finish()
  await fs.idle()
  assert.deepEqual(replies[1], { unique: 4, error: 0, bytes: 8192 })
})

function writeRequest (unique: number, offset: number, data: Buffer): Buffer {
  const body = Buffer.alloc(40 + data.length)
  body.writeBigUInt64LE(BigInt(offset), 8)
  body.writeUInt32LE(data.length, 16)
  data.copy(body, 40)
  return fuseRequest(FUSE_OP.WRITE, unique, body)
}

test('an interrupted WRITE is answered EINTR at once and its signal aborted; its slot waits for the client', async () => {
  const replies: Reply[] = []
  const released: number[] = []
  const signals: AbortSignal[] = []
  const settle: Array<() => void> = []
  const client = {
    sizeBigInt: 1n << 20n,
    metaContexts: [],
    write: (_data: Buffer, _offset: number, options: { signal?: AbortSignal }) => {
      signals.push(options.signal!)
      // Like the client: the caller's promise may settle early, on abort; this one waits.
      return new Promise<void>((resolve) => { settle.push(resolve) })
    }
  }
  const channel = {
    reply: (unique: number, error: number, ...parts: Buffer[]) => { replies.push({ unique, error, bytes: parts.reduce((n, p) => n + p.length, 0) }) },
    release: (slot: number) => { released.push(slot) }
  }
  const fs = new ExportFileSystem(channel as unknown as FuseChannel, {
    client: client as unknown as NbdClient, layout: { kind: 'file' }, readonly: false, access: { uid: 0, gid: 0, mode: 0o600 }, maxWrite: 1 << 20, log: () => {}
  })
  fs.handle(writeRequest(20, 0, Buffer.alloc(4096, 1)), 5)
  assert.equal(signals.length, 1, 'the write carries a signal')
  fs.handle(fuseRequest(FUSE_OP.INTERRUPT, 21, interruptIn(20)), 6)
  assert.deepEqual(replies, [{ unique: 20, error: EINTR, bytes: 0 }], 'EINTR at once')
  assert.equal(signals[0]!.aborted, true, 'the client is told the caller has gone')
  assert.deepEqual(released, [6], 'the interrupted write keeps its slot (its payload) while the client has it')
  settle[0]!()
  await fs.idle()
  assert.deepEqual(released, [6, 5])
  assert.equal(replies.length, 1, 'nothing more for the interrupted write')
  // A write that finishes normally gets a fresh signal; its controller is then reused.
  fs.handle(writeRequest(22, 0, Buffer.alloc(512, 2)), 7)
  assert.equal(signals[1]!.aborted, false)
  assert.notEqual(signals[1], signals[0])
  settle[1]!()
  await fs.idle()
  fs.handle(writeRequest(23, 512, Buffer.alloc(512, 3)), 8)
  assert.equal(signals[2], signals[1], 'an unaborted signal is pooled, not allocated per write')
  settle[2]!()
  await fs.idle()
  assert.deepEqual(replies.slice(1), [{ unique: 22, error: 0, bytes: 8 }, { unique: 23, error: 0, bytes: 8 }])
})
