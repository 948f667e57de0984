/**
 * The write ledger on its own (src/client/write-ledger.ts): what a replay writes is the newest
 * acknowledged content of every byte no FLUSH covered, a FLUSH covers only within its epoch,
 * lost writes are reported to every FLUSH that vouched for them, and memory stays bounded.
 */
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { MAX_RECORDS, WriteLedger } from '../../src/client/write-ledger.ts'

describe('write ledger', () => {
  test('the newest acknowledged content of each range; a FLUSH frees what was acknowledged before it was sent', () => {
    const ledger = new WriteLedger(1 << 20)
    ledger.acknowledged(0n, 'data', 4096, false, Buffer.alloc(4096, 1))
    ledger.acknowledged(1024n, 'data', 1024, false, Buffer.alloc(1024, 2))
    ledger.acknowledged(1n << 40n, 'zero', 1 << 30, false)
    const pieces = ledger.pieces().map((p) => [p.start, p.end, p.kind, p.data?.[0]])
    assert.deepEqual(pieces, [[0n, 1024n, 'data', 1], [1024n, 2048n, 'data', 2], [2048n, 4096n, 'data', 1], [1n << 40n, (1n << 40n) + (1n << 30n), 'zero', undefined]])
    const mark = ledger.mark()
    ledger.acknowledged(8192n, 'data', 512, false, Buffer.alloc(512, 3))
    assert.equal(ledger.flushed(mark), true)
    assert.deepEqual(ledger.pieces().map((p) => p.start), [8192n], 'only what came after the FLUSH was sent')
  })

  test('a write that was not acknowledged changes nothing; one acknowledged with FUA only cuts', () => {
    const ledger = new WriteLedger(1 << 20)
    ledger.acknowledged(0n, 'data', 4096, false, Buffer.alloc(4096, 1))
    // W2 to the same range failed (EIO, aborted, lost): the ledger never hears of it, and W1 stays.
    assert.deepEqual(ledger.pieces().map((p) => [p.start, p.end]), [[0n, 4096n]])
    ledger.acknowledged(1024n, 'data', 1024, true, Buffer.alloc(1024, 9))
    assert.deepEqual(ledger.pieces().map((p) => [p.start, p.end]), [[0n, 1024n], [2048n, 4096n]])
  })

  test('a FLUSH answered in another epoch covers nothing; nothing is covered before the replay', () => {
    const ledger = new WriteLedger(1 << 20)
    ledger.acknowledged(0n, 'data', 512, false, Buffer.alloc(512, 1))
    const before = ledger.mark()
    ledger.newEpoch()
    assert.equal(ledger.replayed, false)
    assert.equal(ledger.flushed(before), false)
    assert.equal(ledger.records, 1)
    ledger.replayDone(ledger.epoch)
    assert.equal(ledger.flushed(ledger.mark()), true)
    assert.equal(ledger.records, 0)
    ledger.newEpoch()
    assert.equal(ledger.replayed, false, "replayed only once the replay says so (a write may still be on a wire)")
  })

  test('a lost write fails every FLUSH called after it was acknowledged, once its epoch ended', () => {
    const ledger = new WriteLedger(0)
    const early = ledger.flushCalled()
    ledger.acknowledged(0n, 'data', 512, false, Buffer.alloc(512))
    const late = ledger.flushCalled()
    const alsoLate = ledger.flushCalled()
    ledger.newEpoch()
    assert.equal(ledger.lostBefore(early), false, 'called before the write was acknowledged: not its to vouch for')
    assert.equal(ledger.lostBefore(late), true)
    const after = ledger.flushCalled()
    assert.equal(ledger.lostBefore(alsoLate), true, 'called before the first was told: told too')
    assert.equal(ledger.lostBefore(after), false, 'called after a FLUSH was told: not told again')
  })

  test('a lost write covered by a FLUSH in its own epoch is no longer owed', () => {
    const ledger = new WriteLedger(0)
    ledger.acknowledged(0n, 'data', 512, false, Buffer.alloc(512))
    assert.equal(ledger.flushed(ledger.mark()), true)
    const after = ledger.flushCalled()
    ledger.newEpoch()
    assert.equal(ledger.lostBefore(after), false)
  })

  test('borrowed: a write too big for the ring keeps the caller\'s buffer until keep() or lose()', () => {
    const ledger = new WriteLedger(4096)
    const mark = ledger.flushCalled()
    const rec = ledger.acknowledged(0n, 'data', 8192, false, Buffer.alloc(8192, 5))!
    assert.equal(rec.borrowed, true)
    assert.equal(ledger.keep(rec), false, 'no room in the ring, still live')
    ledger.newEpoch()
    assert.equal(ledger.pieces().length, 1, 'replayed from the caller\'s buffer while it waits')
    ledger.lose(rec)
    assert.deepEqual(ledger.pieces(), [], 'a lost record is not replayed')
    assert.equal(ledger.lostBefore(mark), false)
    assert.equal(ledger.lostBefore(ledger.flushCalled()), true, 'lost in an epoch that ended: owed at once')
  })

  test('random writes, FUA writes and FLUSHes: pieces() is what a byte-by-byte model says, and the ring is reused', () => {
    let seed = 7
    const random = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n }
    const SPACE = 256
    const ledger = new WriteLedger(2048)
    const model: Array<{ seq: number, value: number } | null> = new Array(SPACE).fill(null)
    let seq = 0
    const marks: Array<ReturnType<WriteLedger['mark']>> = []
    for (let step = 0; step < 4000; step++) {
      const start = random(SPACE - 1)
      const length = 1 + random(Math.min(64, SPACE - start))
      const what = random(10)
      if (what < 7) {
        const value = step & 0xff
        const kind = random(4) === 0 ? 'zero' : 'data'
        const fua = random(8) === 0
        const rec = ledger.acknowledged(BigInt(start), kind, length, fua, Buffer.alloc(length, value))
        const mine = seq++
        if (rec?.borrowed === true && !ledger.keep(rec)) {
          // As Ordering does: a FLUSH of everything so far, then the record is covered too.
          assert.equal(ledger.flushed(ledger.mark()), true)
          assert.equal(ledger.keep(rec), true)
          model.fill(null)
        } else {
          for (let i = start; i < start + length; i++) model[i] = fua ? null : { seq: mine, value: kind === 'zero' ? -1 : value }
        }
      } else if (what === 7) {
        marks.push(ledger.mark())
      } else if (marks.length > 0) {
        const m = marks.shift()!
        assert.equal(ledger.flushed(m), true)
        for (let i = 0; i < SPACE; i++) if (model[i] !== null && model[i]!.seq < m.seq) model[i] = null
      }
      if (step % 50 === 0 || step === 3999) {
        const got: Array<number | null> = new Array(SPACE).fill(null)
        for (const p of ledger.pieces()) {
          for (let i = Number(p.start); i < Number(p.end); i++) {
            assert.equal(got[i], null, `byte ${i} in two pieces at step ${step}`)
            got[i] = p.kind === 'zero' ? -1 : p.data![i - Number(p.start)]!
          }
        }
        assert.deepEqual(got, model.map((m) => m === null ? null : m.value), `step ${step}`)
        assert.ok(ledger.segments <= 2 * ledger.records + 1)
      }
    }
  })

  test('150,000 FUA writes after one plain write leave one record and no marks; a sweep is linear', () => {
    const ledger = new WriteLedger(1 << 20)
    ledger.acknowledged(0n, 'data', 4096, false, Buffer.alloc(4096, 1))
    for (let i = 0; i < 150_000; i++) ledger.acknowledged(BigInt(8192 + (i % 4096) * 512), 'data', 512, true, Buffer.alloc(512))
    assert.equal(ledger.records, 1)
    assert.equal(ledger.segments, 1)
    assert.equal(ledger.pieces().length, 1)
  })

  test('records are bounded: past MAX_RECORDS a write is lost (reported), never kept without bound', () => {
    const ledger = new WriteLedger(1 << 20)
    for (let i = 0; i < MAX_RECORDS + 10; i++) ledger.acknowledged(BigInt(i * 2), 'zero', 1, false)
    assert.equal(ledger.records, MAX_RECORDS)
    assert.equal(ledger.wantsFlush, true)
    const after = ledger.flushCalled()
    ledger.newEpoch()
    assert.equal(ledger.lostBefore(after), true)
  })
})
