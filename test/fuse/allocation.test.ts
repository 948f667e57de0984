/**
 * st_blocks on an export too large and fragmented to walk at once: GETATTR is answered at once,
 * each refresh is bounded (one block status request at a time, a few per step), and the count
 * moves on from where the last step stopped instead of starting over (which never finished).
 */
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import '../helpers/assert.ts'
import type { NbdClient } from '../../src/client/nbd-client.ts'
import { FUSE_OP } from '../../src/fuse/abi.ts'
import { fuseRequest } from '../helpers/fuse-requests.ts'
import type { FuseChannel } from '../../src/fuse/channel.ts'
import { u64 } from '../../src/fuse/codec.ts'
import { ExportFileSystem } from '../../src/fuse/file-system.ts'

const MiB = 1024 * 1024
const SIZE = 1n << 40n

test('GETATTR on a 1 TiB export mapped 1 MiB per request: answered at once, bounded steps, a count that moves on', async () => {
  let calls = 0
  let running = 0
  let mostAtOnce = 0
  const offsets: bigint[] = []
  const client = {
    sizeBigInt: SIZE,
    metaContexts: ['base:allocation'],
    // Every answer covers 1 MiB of hole: walking 1 TiB would take a million requests.
    blockStatus: async (length: number, offset: bigint) => {
      calls++
      running++
      mostAtOnce = Math.max(mostAtOnce, running)
      offsets.push(offset)
      await sleep(1)
      running--
      return new Map([['base:allocation', [{ length: Math.min(MiB, length), flags: 3 }]]])
    }
  }
  const replies: Buffer[] = []
  const channel = {
    reply: (_unique: number, error: number, ...parts: Buffer[]) => {
      assert.equal(error, 0)
      replies.push(Buffer.concat(parts))
    },
    release: () => {}
  }
  const fs = new ExportFileSystem(channel as unknown as FuseChannel, {
    client: client as unknown as NbdClient,
    layout: { kind: 'file' },
    readonly: false,
    access: { uid: 0, gid: 0, mode: 0o600 },
    maxWrite: MiB,
    log: () => {},
    allocation: { intervalMs: 10, stepMs: 10_000, stepRequests: 16 }
  })
  const getattr = (unique: number): bigint => {
    const before = replies.length
    fs.handle(fuseRequest(FUSE_OP.GETATTR, unique, Buffer.alloc(16)), 0)
    assert.equal(replies.length, before + 1, 'GETATTR is answered before any block status returns')
    // fuse_attr_out: attr_valid (8), attr_valid_nsec, dummy (8), then fuse_attr: ino, size, blocks.
    return BigInt(u64(replies[replies.length - 1]!, 16 + 16))
  }
  try {
    const all = SIZE / 512n
    assert.equal(getattr(1), all, 'nothing counted yet: every block counts as allocated')
    // The first 64 MiB region takes 64 requests, 16 per step: four steps.
    const regionDone = all - 64n * BigInt(MiB) / 512n
    let blocks = all
    for (let i = 2; blocks !== regionDone && i < 500; i++) {
      await sleep(15)
      blocks = getattr(i)
    }
    assert.equal(blocks, regionDone, 'the first region was counted, over several steps')
    assert.equal(mostAtOnce, 1, 'one block status request at a time')
    assert.ok(calls >= 64 && calls <= 80, `${calls} requests for 64 MiB`)
    // Each request started where the previous one ended: nothing was walked twice.
    offsets.forEach((offset, i) => { assert.equal(offset, BigInt(i) * BigInt(MiB)) })
  } finally {
    fs.close()
  }
})
