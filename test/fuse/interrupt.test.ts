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
import { FUSE_OP, FUSE_ROOT_ID, IN_HEADER } from '../../src/fuse/abi.ts'
import type { FuseChannel } from '../../src/fuse/channel.ts'
import { ExportFileSystem } from '../../src/fuse/filesystem.ts'

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
    size: 1n << 20n,
    info: { flags: 0 },
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
    client: client as unknown as NbdClient, layout: { kind: 'file' }, readonly: false, uid: 0, gid: 0, maxWrite: 1 << 20, log: () => {}
  })
  return { fs, replies, released, finish, reads }
}

function request (opcode: number, unique: number, body: Buffer): Buffer {
  const b = Buffer.alloc(IN_HEADER + body.length)
  b.writeUInt32LE(b.length, 0)
  b.writeUInt32LE(opcode, 4)
  b.writeBigUInt64LE(BigInt(unique), 8)
  b.writeBigUInt64LE(BigInt(FUSE_ROOT_ID), 16)
  body.copy(b, IN_HEADER)
  return b
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
  fs.handle(request(FUSE_OP.READ, 7, readIn(0, 4096)), 0)
  await sleep(5)
  assert.equal(reads.length, 1, 'the NBD read is under way')
  assert.equal(fs.stats.inFlight, 1)
  fs.handle(request(FUSE_OP.INTERRUPT, 8, interruptIn(7)), 1)
  assert.deepEqual(replies, [{ unique: 7, error: EINTR, bytes: 0 }], 'EINTR for the read, nothing for the INTERRUPT itself')
  assert.equal(fs.stats.interrupted, 1)
  // A second interrupt for it: already answered, so EAGAIN (the kernel's protocol).
  fs.handle(request(FUSE_OP.INTERRUPT, 9, interruptIn(7)), 2)
  assert.deepEqual(replies[1], { unique: 9, error: EAGAIN, bytes: 0 })
  finish()
  await fs.idle()
  assert.equal(replies.length, 2, 'no reply when the NBD read finishes later')
  assert.equal(fs.stats.inFlight, 0)
})

test('an INTERRUPT for a request not in flight gets EAGAIN; other reads are answered normally', async () => {
  const { fs, replies, finish } = rig()
  fs.handle(request(FUSE_OP.INTERRUPT, 3, interruptIn(99)), 0)
  assert.deepEqual(replies, [{ unique: 3, error: EAGAIN, bytes: 0 }])
  fs.handle(request(FUSE_OP.READ, 4, readIn(4096, 8192)), 1)
  finish()
  await fs.idle()
  assert.deepEqual(replies[1], { unique: 4, error: 0, bytes: 8192 })
})
