/**
 * The client's building blocks on their own: the one wait queue (abort, deadlines), the range
 * lock and write order built on it, and a request's two lives (the caller
 * answered early, the payload released only by the last socket that held it).
 */
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { WaitQueue } from '../../src/client/wait-queue.ts'
import { RangeLock, type HeldRange } from '../../src/client/range-lock.ts'
import { WriteOrder } from '../../src/client/write-order.ts'
import { Request } from '../../src/client/engine/request.ts'
import { NBD_CMD } from '../../src/protocol/constants.ts'
import { handled, rejectsWithCode, within } from '../helpers/assert.ts'

describe('wait queue', () => {
  test('FIFO grants, an abort removes the waiter, a deadline rejects with the owner\'s error', async () => {
    let free = 0
    const q = new WaitQueue<string>({
      grantable: (_item, ahead) => ahead.length === 0 && free > 0,
      granted: () => { free-- },
      expired: (item) => new Error(`${item} waited too long`)
    })
    const order: string[] = []
    const a = q.wait('a').then(() => order.push('a'))
    const ac = new AbortController()
    const b = q.wait('b', ac.signal)
    const c = q.wait('c').then(() => order.push('c'))
    const d = q.wait('d', undefined, performance.now() + 50)
    ac.abort()
    await rejectsWithCode(b, 'ABORT_ERR', 100)
    await assert.rejects(d, /d waited too long/)
    free = 2
    q.pump()
    await within(Promise.all([a, c]), 100)
    assert.deepEqual(order, ['a', 'c'])
    assert.equal(q.length, 0)
  })
})

describe('range lock', () => {
  test('overlapping ranges go one after the other, in order; disjoint ones at once', async () => {
    const lock = new RangeLock()
    const first = lock.tryAcquire(0n, 4096)!
    assert.ok(first !== undefined)
    assert.equal(lock.tryAcquire(1000n, 1000), undefined, 'overlap: not at once')
    const elsewhere = lock.tryAcquire(8192n, 4096)
    assert.ok(elsewhere !== undefined, 'disjoint: at once')
    const order: string[] = []
    const second = lock.acquire(0n, 512).then((r) => { order.push('second'); return r })
    const third = lock.acquire(256n, 768).then((r) => { order.push('third'); return r })
    await sleep(5)
    assert.deepEqual(order, [])
    lock.release(first)
    const r2 = await second
    await sleep(5)
    assert.deepEqual(order, ['second'], 'the third overlaps the second: it waits for it')
    lock.release(r2)
    lock.release(await third)
    lock.release(elsewhere!)
    assert.equal(lock.held, 0)
  })

  test('offsets past 2^53 round so that ranges only grow: overlapping ones near 2^63 conflict', () => {
    const lock = new RangeLock()
    // Near 2^63 doubles are 1024 apart: rounded to nearest, both ranges would become empty.
    const top = 2n ** 63n
    const a = lock.tryAcquire(top - 2048n, 10)
    assert.ok(a !== undefined)
    assert.equal(lock.tryAcquire(top - 2043n, 10), undefined, 'overlaps a: waits')
    assert.equal(lock.tryAcquire(top - 2039n, 1), undefined, 'a\'s last byte')
    // Conservative, not exact: disjoint ranges up there wait for each other too.
    assert.equal(lock.tryAcquire(top - 1000n, 10), undefined)
    // A range across 2^53 conflicts with everything above it, and nothing below its start.
    lock.release(a)
    const across = lock.tryAcquire(2n ** 53n - 4096n, 8192)!
    assert.ok(across !== undefined)
    assert.equal(lock.tryAcquire(2n ** 53n + 100n, 10), undefined)
    assert.equal(lock.tryAcquire(top - 10n, 10), undefined)
    assert.equal(lock.tryAcquire(2n ** 53n + 1n, 1), undefined, 'every start past 2^53 is 2^53')
    const below = lock.tryAcquire(2n ** 53n - 8192n, 4096)
    assert.ok(below !== undefined, 'adjacent below 2^53: exact')
    // Numbers as offsets: the same keys.
    assert.equal(lock.tryAcquire(2 ** 53 - 100, 10), undefined)
    assert.ok(lock.tryAcquire(2 ** 53 - 16384, 8192) !== undefined)
    assert.equal(lock.tryAcquire(2 ** 53 - 8192 - 1, 2), undefined, 'a number offset against a bigint range')
    lock.release(across)
    lock.release(below!)
    assert.ok(lock.tryAcquire(top - 2043n, 10) !== undefined)
  })

  test('adjacent ranges (end == start) do not conflict, held or waiting', async () => {
    const lock = new RangeLock()
    const mid = lock.tryAcquire(4096n, 4096)!
    assert.ok(mid !== undefined)
    const left = lock.tryAcquire(0n, 4096)!
    const right = lock.tryAcquire(8192n, 4096)!
    assert.ok(left !== undefined && right !== undefined, 'adjacent on both sides: at once')
    assert.equal(lock.tryAcquire(4095n, 1), undefined, 'left\'s last byte')
    lock.release(left)
    lock.release(right)
    // A waiter [0, 8192) behind mid: [8192, ...) touches it and goes at once.
    const waiter = lock.acquire(0n, 8192)
    assert.ok(lock.tryAcquire(8192n, 4096) !== undefined, 'adjacent to a waiter: at once')
    assert.equal(lock.tryAcquire(0n, 1), undefined, 'overlaps the waiter (not mid): behind it')
    lock.release(mid)
    lock.release(await within(waiter, 100))
    assert.equal(lock.held, 1)
  })

  test('many held ranges: conflicts found by search, released in any order (against a model)', () => {
    // A seeded generator: the same ranges every run.
    let seed = 26
    const rand = (n: number): number => { // mulberry32
      seed = (seed + 0x6d2b79f5) | 0
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
      return (((t ^ (t >>> 14)) >>> 0) % n)
    }
    let most = 0
    const lock = new RangeLock()
    const model: Array<{ start: number, end: number, range: ReturnType<RangeLock['tryAcquire']> }> = []
    const clash = (start: number, end: number): boolean => model.some((m) => start < m.end && m.start < end)
    for (let round = 0; round < 2000; round++) {
      if (model.length > 0 && rand(4) === 0) {
        const [m] = model.splice(rand(model.length), 1)
        lock.release(m!.range!)
      } else {
        // Offsets in 512-byte units over 64 KiB, lengths 1..4 units: many overlaps, many touching.
        const start = rand(128) * 512
        const end = start + (1 + rand(4)) * 512
        const range = lock.tryAcquire(BigInt(start), end - start)
        assert.equal(range === undefined, clash(start, end), `round ${round}: [${start}, ${end}) against ${model.length} held`)
        if (range !== undefined) model.push({ start, end, range })
      }
      assert.equal(lock.held, model.length)
      most = Math.max(most, model.length)
    }
    assert.ok(most >= 32, `many held at once (${most})`)
    for (const m of model) lock.release(m.range!)
    assert.equal(lock.held, 0)
    assert.ok(lock.tryAcquire(0n, 65536) !== undefined)
  })

  test('waiters: FIFO among overlapping ones (nothing jumps a waiter), others pass; an abort lets those behind go', async () => {
    const lock = new RangeLock()
    const order: string[] = []
    const track = (name: string, p: Promise<HeldRange>): Promise<HeldRange> => p.then((r) => { order.push(name); return r })
    const h = lock.tryAcquire(0n, 10)!
    // A staircase: x1 waits for h, x2 only for x1 (a waiter), x3 only for x2.
    const x1 = track('x1', lock.acquire(5n, 10))
    const x2 = track('x2', lock.acquire(12n, 8))
    const x3 = track('x3', lock.acquire(18n, 12))
    // Clear of h but not of x2: refused at once, and waits behind x2 (no starvation of x2).
    assert.equal(lock.tryAcquire(15n, 2), undefined)
    const late = track('late', lock.acquire(15n, 2))
    const clear = lock.tryAcquire(40n, 10)
    assert.ok(clear !== undefined, 'overlaps nobody: at once')
    await sleep(5)
    assert.deepEqual(order, [])
    lock.release(h)
    const r1 = await within(x1, 100)
    await sleep(5)
    assert.deepEqual(order, ['x1'])
    lock.release(r1)
    const r2 = await within(x2, 100)
    await sleep(5)
    assert.deepEqual(order, ['x1', 'x2'], 'x3 and late overlap x2')
    lock.release(r2)
    const [r3, rl] = await within(Promise.all([x3, late]), 100)
    assert.deepEqual(order, ['x1', 'x2', 'x3', 'late'])
    lock.release(r3)
    lock.release(rl)

    // An abort: who waited only for the aborted waiter goes at once.
    const g = lock.tryAcquire(0n, 10)!
    const ac = new AbortController()
    const a = handled(lock.acquire(5n, 10, ac.signal))
    const b = lock.acquire(12n, 8)
    assert.equal(lock.tryAcquire(10n, 2), undefined, 'overlaps a')
    ac.abort()
    await rejectsWithCode(a, 'ABORT_ERR', 100)
    lock.release(await within(b, 100))
    const between = lock.tryAcquire(10n, 2)
    assert.ok(between !== undefined, 'a is gone from the waiters')
    lock.release(between)
    lock.release(g)
    lock.release(clear)
    assert.equal(lock.held, 0)
  })

  test('waiters against a model of the scan it replaced: the same grants after every acquire, release and abort', async () => {
    let seed = 2026
    const rand = (n: number): number => { // mulberry32
      seed = (seed + 0x6d2b79f5) | 0
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
      return (((t ^ (t >>> 14)) >>> 0) % n)
    }
    interface Span { readonly id: number, readonly start: number, readonly end: number }
    const clash = (a: Span, b: Span): boolean => a.start < b.end && b.start < a.end
    // The model: the lock as it was, held ranges and waiters scanned.
    const held: Span[] = []
    let waiting: Span[] = []
    const pump = (): void => {
      const ahead: Span[] = []
      waiting = waiting.filter((w) => {
        if (!held.some((h) => clash(h, w)) && !ahead.some((a) => clash(a, w))) {
          held.push(w)
          return false
        }
        ahead.push(w)
        return true
      })
    }
    const lock = new RangeLock()
    const ranges = new Map<number, HeldRange>()
    const aborts = new Map<number, AbortController>()
    const settled = new Set<number>()
    let most = 0
    for (let id = 0; id < 1500; id++) {
      const op = rand(10)
      if (op < 6 || held.length === 0) {
        const start = rand(64) * 512
        const span = { id, start, end: start + (1 + rand(6)) * 512 }
        const ac = new AbortController()
        aborts.set(id, ac)
        lock.acquire(BigInt(span.start), span.end - span.start, ac.signal).then((r) => {
          ranges.set(id, r)
          settled.add(id)
        }, () => { settled.add(id) })
        if (!held.some((h) => clash(h, span)) && !waiting.some((w) => clash(w, span))) held.push(span)
        else waiting.push(span)
        pump()
      } else if (op < 9) {
        const [h] = held.splice(rand(held.length), 1)
        lock.release(ranges.get(h!.id)!)
        pump()
      } else if (waiting.length > 0) {
        const [w] = waiting.splice(rand(waiting.length), 1)
        aborts.get(w!.id)!.abort()
        pump()
      }
      await new Promise(setImmediate)
      most = Math.max(most, waiting.length)
      const expected = new Set(held.map((h) => h.id))
      for (const w of waiting) assert.ok(!settled.has(w.id), `step ${id}: ${w.id} should still wait`)
      for (const h of expected) assert.ok(ranges.has(h), `step ${id}: ${h} should be held`)
      assert.equal(lock.held, held.length, `step ${id}`)
    }
    assert.ok(most >= 16, `many waiting at once (${most})`)
  })

  test('a pinned range refuses whoever overlaps it, waiting or new, until released', async () => {
    const lock = new RangeLock()
    const p = lock.tryAcquire(0n, 4096)!
    const q = lock.tryAcquire(8192n, 4096)!
    const overP = handled(lock.acquire(1000n, 10))
    const overQ = lock.acquire(9000n, 10)
    assert.equal(lock.anyInDoubt, false)
    lock.pin(p)
    assert.equal(lock.anyInDoubt, true)
    await rejectsWithCode(overP, 'NBD_ERR_IN_DOUBT', 100, /1000\.\.1010 is refused: an earlier write to 0\.\.4096/)
    assert.throws(() => lock.tryAcquire(4095n, 1), (err: Error & { code?: string }) => err.code === 'NBD_ERR_IN_DOUBT')
    await rejectsWithCode(lock.acquire(0n, 1), 'NBD_ERR_IN_DOUBT', 100)
    assert.equal(lock.overlapsInDoubt(2000n, 10), true)
    assert.equal(lock.overlapsInDoubt(4096n, 10), false, 'adjacent')
    const next = lock.tryAcquire(4096n, 4096)
    assert.ok(next !== undefined, 'adjacent to the pinned range: at once')
    assert.equal(lock.held, 3)
    lock.release(q)
    lock.release(await within(overQ, 100))
    lock.release(p)
    lock.release(p)
    assert.equal(lock.anyInDoubt, false)
    assert.equal(lock.overlapsInDoubt(2000n, 10), false)
    const again = lock.tryAcquire(0n, 4096)
    assert.ok(again !== undefined, 'released: free again')
    lock.pin(p)
    assert.equal(lock.anyInDoubt, false, 'pinning a released range does nothing')
    lock.release(again)
    lock.release(next)
    assert.equal(lock.held, 0)
  })

  test('holdInDoubt may overlap a held range; it refuses newcomers over it, the held one\'s waiters go', async () => {
    const lock = new RangeLock()
    const h = lock.tryAcquire(0n, 8192)!
    const d = lock.holdInDoubt(4096n, 8192)
    assert.equal(lock.held, 2)
    assert.equal(lock.anyInDoubt, true)
    assert.throws(() => lock.tryAcquire(10000n, 10), /10000\.\.10010 is refused: an earlier write to 4096\.\.12288/)
    assert.throws(() => lock.tryAcquire(4000n, 200), (err: Error & { code?: string }) => err.code === 'NBD_ERR_IN_DOUBT')
    // Clear of the replay write: waits only for h.
    assert.equal(lock.tryAcquire(100n, 10), undefined)
    const w = lock.acquire(100n, 10)
    assert.ok(lock.tryAcquire(12288n, 10) !== undefined, 'adjacent to the replay write')
    lock.release(h)
    const rw = await within(w, 100)
    assert.ok(lock.tryAcquire(0n, 100) !== undefined, 'h released')
    assert.equal(lock.held, 4)
    lock.release(d)
    assert.equal(lock.anyInDoubt, false)
    assert.ok(lock.tryAcquire(4096n, 8192) !== undefined, 'the replay write released')
    lock.release(rw)
    assert.equal(lock.held, 3)
  })

  test('an empty range overlaps nothing and is held by nothing', () => {
    const lock = new RangeLock()
    const a = lock.tryAcquire(0n, 4096)!
    const empty = lock.tryAcquire(100n, 0)
    assert.ok(empty !== undefined)
    assert.equal(lock.held, 1)
    lock.pin(a)
    assert.ok(lock.tryAcquire(100n, 0) !== undefined, 'not refused either')
    assert.equal(lock.overlapsInDoubt(100n, 0), false)
    lock.release(empty)
    lock.release(a)
    assert.equal(lock.held, 0)
  })
})

describe('write order', () => {
  test('a FLUSH waits for the writes before it; writes after it wait for it', async () => {
    const order = new WriteOrder()
    assert.equal(order.enter('write'), undefined)
    assert.equal(order.enter('write'), undefined)
    const flush = order.enter('flush')!
    const later = order.enter('write')!
    let flushed = false
    let wrote = false
    void flush.then(() => { flushed = true })
    void later.then(() => { wrote = true })
    order.leave('write')
    await sleep(1)
    assert.equal(flushed, false)
    order.leave('write')
    await sleep(1)
    assert.equal(flushed, true)
    assert.equal(wrote, false)
    order.leave('flush')
    await sleep(1)
    assert.equal(wrote, true)
  })
})

describe('a request\'s two lives', () => {
  test('answered early, a write\'s caller hears only once every socket let go of its payload', async () => {
    const req = new Request({ type: NBD_CMD.WRITE, flags: 0, offset: 0n, length: 4, payload: Buffer.alloc(4) })
    let answered: unknown
    req.bind(() => { answered = 'ok' }, (err) => { answered = err })
    const released = req.queuePayload()
    req.queuePayload()
    req.answerEarly(new Error('aborted'))
    released()
    assert.equal(answered, undefined, 'one socket still holds the payload (a retry queued it again)')
    released()
    assert.match(String(answered), /aborted/)
    assert.equal(req.abandoned, true)
    req.answer(undefined)
    assert.match(String(answered), /aborted/, 'answered once')
  })
})
