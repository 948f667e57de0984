/**
 * The dispatcher's answers that the kernel tests cannot see directly: what INIT negotiates,
 * the OPEN flags (-o kernel_cache), O_TRUNC zeroing a writable mount and refused on a
 * read-only one.
 */
import assert from 'node:assert/strict'
import { constants } from 'node:fs'
import { constants as os } from 'node:os'
import { test } from 'node:test'
import '../helpers/assert.ts'
import type { NbdClient } from '../../src/client/nbd-client.ts'
import { FOPEN_KEEP_CACHE, FOPEN_PARALLEL_DIRECT_WRITES, FUSE_INIT_FLAG, FUSE_OP } from '../../src/fuse/abi.ts'
import { fuseRequest } from '../helpers/fuse-requests.ts'
import type { FuseChannel } from '../../src/fuse/channel.ts'
import { ExportFileSystem } from '../../src/fuse/file-system.ts'

interface Reply { unique: number, error: number, body: Buffer }

function rig (options: { readonly?: boolean, keepCache?: boolean } = {}): { fs: ExportFileSystem, replies: Reply[], zeroed: Array<[bigint, number]> } {
  const replies: Reply[] = []
  const channel = {
    reply: (unique: number, error: number, ...parts: Buffer[]) => { replies.push({ unique, error, body: Buffer.from(Buffer.concat(parts)) }) },
    release: () => {}
  }
  const zeroed: Array<[bigint, number]> = []
  const client = {
    sizeBigInt: 1n << 20n,
    metaContexts: [],
    canZero: true,
    punchHole: async (length: number, offset: bigint) => { zeroed.push([offset, length]) }
  }
  const fs = new ExportFileSystem(channel as unknown as FuseChannel, {
    client: client as unknown as NbdClient, layout: { kind: 'file' }, readonly: options.readonly === true,
    access: { uid: 0, gid: 0, mode: 0o600 }, maxWrite: 1 << 20, keepCache: options.keepCache === true, log: () => {}
  })
  return { fs, replies, zeroed }
}


function openIn (flags: number): Buffer {
  const b = Buffer.alloc(8)
  b.writeUInt32LE(flags, 0)
  return b
}

test('INIT takes ATOMIC_O_TRUNC; OPEN with O_TRUNC zeroes the whole export first (the size stays), with KEEP_CACHE under -o kernel_cache', async () => {
  const { fs, replies, zeroed } = rig({ keepCache: true })
  const init = Buffer.alloc(16)
  init.writeUInt32LE(7, 0)
  init.writeUInt32LE(45, 4)
  init.writeUInt32LE(1 << 20, 8)
  init.writeUInt32LE(0xffffffff, 12)
  fs.handle(fuseRequest(FUSE_OP.INIT, 1, init), 0)
  assert.equal(replies[0]!.error, 0)
  const flags = replies[0]!.body.readUInt32LE(12)
  assert.notEqual(flags & FUSE_INIT_FLAG.ATOMIC_O_TRUNC, 0, 'the kernel passes O_TRUNC to OPEN instead of a SETATTR to size 0')
  fs.handle(fuseRequest(FUSE_OP.OPEN, 2, openIn(constants.O_WRONLY | constants.O_TRUNC)), 0)
  assert.equal(replies.length, 1, 'no answer before the export is zeroed')
  await fs.idle()
  assert.deepEqual(zeroed, [[0n, 1 << 20]])
  assert.equal(replies[1]!.error, 0)
  assert.equal(replies[1]!.body.readUInt32LE(8), FOPEN_PARALLEL_DIRECT_WRITES | FOPEN_KEEP_CACHE)
  const plain = rig()
  plain.fs.handle(fuseRequest(FUSE_OP.OPEN, 3, openIn(constants.O_RDONLY)), 0)
  assert.equal(plain.replies[0]!.body.readUInt32LE(8), FOPEN_PARALLEL_DIRECT_WRITES, 'no KEEP_CACHE by default')
})

test('a read-only mount refuses O_TRUNC and write opens with EROFS; CREATE is EACCES', () => {
  const { fs, replies } = rig({ readonly: true })
  fs.handle(fuseRequest(FUSE_OP.OPEN, 1, openIn(constants.O_WRONLY | constants.O_TRUNC)), 0)
  fs.handle(fuseRequest(FUSE_OP.OPEN, 2, openIn(constants.O_RDONLY)), 0)
  fs.handle(fuseRequest(FUSE_OP.CREATE, 3, Buffer.alloc(24)), 0)
  assert.deepEqual(replies.map((r) => r.error), [-os.errno.EROFS, 0, -os.errno.EACCES])
})
