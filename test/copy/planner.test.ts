/**
 * The copy planner and zero detection, on their own (pure: no servers).
 */
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { planPieces } from '../../src/copy/planner.ts'
import { zeroRuns } from '../../src/copy/zero-detect.ts'

async function collect<T> (it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = []
  for await (const x of it) out.push(x)
  return out
}

async function * extents (list: Array<[number, number, number]>): AsyncGenerator<{ offset: number, length: number, flags: number }> {
  for (const [offset, length, flags] of list) yield { offset, length, flags }
}

test('planPieces: data cut at multiples of the request size, zero runs merged whatever their flags', async () => {
  const pieces = await collect(planPieces(extents([[0, 1500, 0], [1500, 1000, 3], [2500, 500, 2], [3000, 1100, 0]]), 0, 4100, 1024))
  assert.deepEqual(pieces, [
    { offset: 0, length: 1024, zero: false },
    { offset: 1024, length: 476, zero: false },
    { offset: 1500, length: 1500, zero: true },
    { offset: 3000, length: 72, zero: false },
    { offset: 3072, length: 1024, zero: false },
    { offset: 4096, length: 4, zero: false }
  ])
  // A hole without the ZERO bit may read as anything: it is data.
  assert.deepEqual(await collect(planPieces(extents([[0, 100, 1]]), 0, 100, 64)), [{ offset: 0, length: 64, zero: false }, { offset: 64, length: 36, zero: false }])
  // Extents that stop short: the rest is data. No extents at all: all data.
  assert.deepEqual(await collect(planPieces(extents([[0, 10, 2]]), 0, 20, 64)), [{ offset: 0, length: 10, zero: true }, { offset: 10, length: 10, zero: false }])
  assert.equal((await collect(planPieces(undefined, 0, 10_000, 4096))).length, 3)
})

test('zeroRuns: all data, all zero, and mixed buffers in blocks', () => {
  const block = 4096
  const data = Buffer.alloc(4 * block, 1)
  assert.deepEqual(zeroRuns(data, block), [{ at: 0, length: 4 * block, zero: false }])
  assert.deepEqual(zeroRuns(Buffer.alloc(4 * block), block), [{ at: 0, length: 4 * block, zero: true }])
  const mixed = Buffer.alloc(4 * block)
  mixed[block + 5] = 9
  mixed[3 * block + block - 1] = 9
  assert.deepEqual(zeroRuns(mixed, block), [
    { at: 0, length: block, zero: true },
    { at: block, length: block, zero: false },
    { at: 2 * block, length: block, zero: true },
    { at: 3 * block, length: block, zero: false }
  ])
  // A block that starts with a zero byte but holds data is data.
  const late = Buffer.alloc(2 * block, 7)
  late.fill(0, 0, block - 1)
  assert.deepEqual(zeroRuns(late, block), [{ at: 0, length: 2 * block, zero: false }])
  // A short last block.
  assert.deepEqual(zeroRuns(Buffer.alloc(block + 100), block), [{ at: 0, length: block + 100, zero: true }])
})
