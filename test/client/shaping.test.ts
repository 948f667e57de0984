/**
 * Pure request shaping (src/client/shaping.ts): widening to whole blocks, pieces, the edges
 * of a read-modify-write, and status requests near an unaligned export tail.
 */
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import {
  bigPieces, patchEdge, pieces, planReadModifyWrite, statusRange, toBig, toLength, trimExtents, widen
} from '../../src/client/shaping.ts'

describe('request shaping', () => {
  test('offsets and lengths: numbers or bigints, never negative or past 2^53 as numbers', () => {
    assert.equal(toBig(5), 5n)
    assert.equal(toBig(2n ** 62n), 2n ** 62n)
    assert.throws(() => toBig(-1), { code: 'NBD_ERR_INVALID_ARGUMENT' })
    assert.throws(() => toBig(2 ** 53), { code: 'NBD_ERR_INVALID_ARGUMENT' })
    assert.equal(toLength(4096n), 4096)
    assert.throws(() => toLength(1.5), { code: 'NBD_ERR_INVALID_ARGUMENT' })
  })

  test('widen: whole blocks around the request; an unreachable tail is an error', () => {
    assert.deepEqual(widen(100n, 200, 512n, 4096n), { head: 100, first: 0n, end: 512n })
    assert.deepEqual(widen(512n, 1024, 512n, 4096n), { head: 0, first: 512n, end: 1536n })
    assert.deepEqual(widen(3n, 5, 1n, 10n), { head: 0, first: 3n, end: 8n })
    assert.throws(() => widen(4000n, 50, 512n, 4050n), { code: 'NBD_ERR_INVALID_ARGUMENT', message: /not a whole block/ })
  })

  test('pieces cover the range exactly', () => {
    assert.deepEqual(pieces(10, 4), [[0, 4], [4, 4], [8, 2]])
    assert.deepEqual(pieces(8, 8), [[0, 8]])
    assert.deepEqual(bigPieces(5n, 15n, 4), [[5n, 4], [9n, 4], [13n, 2]])
  })

  test('read-modify-write: the partial edge blocks, and the whole blocks between', () => {
    // [100, 1300) over 512-byte blocks: [0, 1536), edges at 0 and 1024, middle [512, 1024).
    const w = widen(100n, 1200, 512n, 8192n)
    assert.deepEqual(planReadModifyWrite(1200, w, 512), { edges: [0, 1024], middle: [512, 1024], total: 1536 })
    // Inside one block: one edge, nothing between.
    const one = widen(100n, 50, 512n, 8192n)
    assert.deepEqual(planReadModifyWrite(50, one, 512), { edges: [0], middle: [512, 512], total: 512 })
    // Aligned start, unaligned end: only the last block is read.
    const tail = widen(0n, 700, 512n, 8192n)
    assert.deepEqual(planReadModifyWrite(700, tail, 512), { edges: [512], middle: [0, 512], total: 1024 })
  })

  test('patching an edge with data, or with zeroes', () => {
    const edge = Buffer.alloc(512, 0xaa)
    patchEdge(edge, 0, 100, 200, Buffer.alloc(200, 0x11))
    assert.deepEqual(edge, Buffer.concat([Buffer.alloc(100, 0xaa), Buffer.alloc(200, 0x11), Buffer.alloc(212, 0xaa)]))
    const last = Buffer.alloc(512, 0xaa)
    // The caller's bytes start 100 bytes into block 0 and run 1200 bytes: block 1024 gets 276.
    patchEdge(last, 1024, 100, 1200, null)
    assert.deepEqual(last, Buffer.concat([Buffer.alloc(276), Buffer.alloc(236, 0xaa)]))
  })

  test('status ranges stop short of an unaligned tail, and say where it starts', () => {
    const size = (1n << 20n) + 100n
    assert.deepEqual(statusRange(0n, 1 << 20, 512n, size, 1 << 30), { first: 0n, length: 1 << 20, skip: 0 })
    assert.deepEqual(statusRange(1000n, (1 << 20) + 100 - 1000, 512n, size, 1 << 30), { first: 512n, length: (1 << 20) - 512, skip: 488 })
    assert.equal(statusRange((1n << 20n) + 10n, 50, 512n, size, 1 << 30).length, 0, 'wholly in the tail: nothing to ask')
    assert.equal(statusRange(0n, 8192, 512n, 8192n, 4096).length, 4096, 'capped at the maximum')
  })

  test('trimExtents keeps what was asked about', () => {
    const chunk = { contextId: 1, extents: [{ length: 1024, flags: 0 }, { length: 1024, flags: 3 }] }
    assert.deepEqual(trimExtents(chunk, 512, 1024), [{ length: 512, flags: 0 }, { length: 512, flags: 3 }])
    assert.deepEqual(trimExtents(chunk, 0, 100), [{ length: 100, flags: 0 }])
  })
})
