/**
 * The client's building blocks on their own: the one wait queue (abort, deadlines), the range
 * lock and write order built on it, the replay log, and a request's two lives (the caller
 * answered early, the payload released only by the last socket that held it).
 */
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { WaitQueue } from '../../src/client/wait-queue.ts'
import { RangeLock } from '../../src/client/range-lock.ts'
import { WriteOrder } from '../../src/client/write-order.ts'
import { ReplayLog } from '../../src/client/replay-log.ts'
import { Request } from '../../src/client/engine/request.ts'
import { NBD_CMD } from '../../src/protocol/constants.ts'
import { rejectsWithCode, within } from '../helpers/assert.ts'

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
    const first = lock.tryAcquire(0n, 4096n)!
    assert.ok(first !== undefined)
    assert.equal(lock.tryAcquire(1000n, 2000n), undefined, 'overlap: not at once')
    const elsewhere = lock.tryAcquire(8192n, 12288n)
    assert.ok(elsewhere !== undefined, 'disjoint: at once')
    const order: string[] = []
    const second = lock.acquire(0n, 512n).then((r) => { order.push('second'); return r })
    const third = lock.acquire(256n, 1024n).then((r) => { order.push('third'); return r })
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

describe('replay log', () => {
  test('the newest content of each range; superseded parts cut out; a FLUSH frees what it covers', () => {
    const log = new ReplayLog(1 << 20)
    assert.ok(log.record(0n, 'data', 4096, Buffer.alloc(4096, 1)))
    log.supersede(1024n, 2048n)
    assert.ok(log.record(1024n, 'data', 1024, Buffer.alloc(1024, 2)))
    assert.ok(log.record(1n << 40n, 'zero', 1 << 30))
    const pieces = log.pieces().map((p) => [p.start, p.end, p.kind, p.data?.[0]])
    assert.deepEqual(pieces, [[0n, 1024n, 'data', 1], [2048n, 4096n, 'data', 1], [1024n, 2048n, 'data', 2], [1n << 40n, (1n << 40n) + (1n << 30n), 'zero', undefined]])
    assert.ok(log.dirty)
    const marker = log.flushSent()
    assert.ok(log.record(8192n, 'data', 512, Buffer.alloc(512, 3)))
    log.flushDone(marker)
    assert.deepEqual(log.pieces().map((p) => p.start), [8192n], 'only what came after the FLUSH was sent')
  })

  test('random records, supersedes and FLUSHes: pieces() is what a byte-by-byte model says, and the ring is reused', () => {
    // The model: for every byte, the latest event that touched it (a record's byte, or
    // "superseded"); a FLUSH with marker m forgets the records acknowledged before it was sent.
    let seed = 7
    const random = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n }
    const SPACE = 256
    const log = new ReplayLog(2048)
    const model: Array<{ gen: number, value: number } | null> = new Array(SPACE).fill(null)
    let gen = 0
    const markers: number[] = []
    for (let step = 0; step < 4000; step++) {
      const start = random(SPACE - 1)
      const length = 1 + random(Math.min(64, SPACE - start))
      const what = random(10)
      if (what < 4) {
        log.supersede(BigInt(start), BigInt(start + length))
        for (let i = start; i < start + length; i++) model[i] = null
      } else if (what < 8) {
        const value = step & 0xff
        const zero = random(4) === 0
        // As Ordering does: the range is superseded when the write is sent, recorded once acknowledged.
        log.supersede(BigInt(start), BigInt(start + length))
        if (!log.record(BigInt(start), zero ? 'zero' : 'data', length, Buffer.alloc(length, value))) {
          // No room: a FLUSH of everything so far frees it (as Ordering does), then it fits.
          const m = log.flushSent()
          gen++
          log.flushDone(m)
          for (let i = 0; i < SPACE; i++) if (model[i] !== null && model[i]!.gen <= m) model[i] = null
          assert.ok(log.record(BigInt(start), zero ? 'zero' : 'data', length, Buffer.alloc(length, value)))
        }
        for (let i = start; i < start + length; i++) model[i] = { gen, value: zero ? -1 : value }
      } else if (what === 8) {
        markers.push(log.flushSent())
        gen++
      } else if (markers.length > 0) {
        const m = markers.shift()!
        log.flushDone(m)
        for (let i = 0; i < SPACE; i++) if (model[i] !== null && model[i]!.gen <= m) model[i] = null
      }
      if (step % 50 === 0 || step === 3999) {
        const got: Array<number | null> = new Array(SPACE).fill(null)
        for (const p of log.pieces()) {
          for (let i = Number(p.start); i < Number(p.end); i++) {
            assert.equal(got[i], null, `byte ${i} in two pieces at step ${step}`)
            got[i] = p.kind === 'zero' ? -1 : p.data![i - Number(p.start)]!
          }
        }
        assert.deepEqual(got, model.map((m) => m === null ? null : m.value), `step ${step}`)
      }
    }
  })

  test('a full ring refuses until a FLUSH frees room; a log that lost a write says so until a FLUSH covers it', () => {
    const log = new ReplayLog(8192)
    assert.ok(log.record(0n, 'data', 4096, Buffer.alloc(4096)))
    assert.ok(log.record(4096n, 'data', 4096, Buffer.alloc(4096)))
    assert.equal(log.wantsFlush, true)
    assert.equal(log.record(8192n, 'data', 4096, Buffer.alloc(4096)), false, 'no room')
    const marker = log.flushSent()
    log.flushDone(marker)
    assert.ok(log.record(8192n, 'data', 4096, Buffer.alloc(4096)), 'room again after the FLUSH')
    log.lose()
    assert.equal(log.complete, false)
    log.flushDone(log.flushSent())
    assert.equal(log.complete, true)
  })
})

describe('a request\'s two lives', () => {
  test('answered early, a write\'s caller hears only once every socket let go of its payload', async () => {
    const req = new Request({ type: NBD_CMD.WRITE, flags: 0, offset: 0n, length: 4, payload: Buffer.alloc(4) })
    let answered: unknown
    req.bind(() => { answered = 'ok' }, (err) => { answered = err })
    req.queuePayload()
    req.queuePayload()
    req.answerEarly(new Error('aborted'))
    req.releasePayload()
    assert.equal(answered, undefined, 'one socket still holds the payload (a retry queued it again)')
    req.releasePayload()
    assert.match(String(answered), /aborted/)
    assert.equal(req.abandoned, true)
    req.answer(undefined)
    assert.match(String(answered), /aborted/, 'answered once')
  })
})
