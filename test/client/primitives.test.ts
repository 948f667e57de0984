/**
 * The client's building blocks on their own: the one wait queue (abort, deadlines), the range
 * lock and write order built on it, and a request's two lives (the caller
 * answered early, the payload released only by the last socket that held it).
 */
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { WaitQueue } from '../../src/client/wait-queue.ts'
import { RangeLock } from '../../src/client/range-lock.ts'
import { WriteOrder } from '../../src/client/write-order.ts'
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
