/**
 * The write ledger: every write the server acknowledged that no FLUSH has covered yet, with
 * the data to write it again, so that a FLUSH vouches only for what the server is known to
 * hold.
 *
 * THE INVARIANT
 *
 *   Server epochs: any loss of a connection that could have been a server restart starts a
 *   new epoch (newEpoch()), for every connection at once. Within one epoch, the server that
 *   acknowledged a write still holds it (in its cache or on disk).
 *
 *   For every byte b, if a write-like command (WRITE, WRITE_ZEROES, TRIM) to b was
 *   acknowledged by the server and no FLUSH has covered it since, then exactly one segment
 *   covers b, and it names the newest such acknowledgement (newest = last acknowledged:
 *   overlapping writes are never on the wire together), with its data (a copy in the ring,
 *   or the caller's own buffer while its caller still waits) — or that write is counted as
 *   lost (#lostSeq), and the first FLUSH of a later epoch fails with NBD_ERR_DURABILITY.
 *   A write acknowledged with FUA is durable: it only cuts what it overwrote.
 *
 *   A FLUSH covers exactly the records acknowledged before it was sent (seq < marker), and
 *   only if it was sent and answered in the same epoch; otherwise it covers nothing. No
 *   FLUSH, and no other request, is sent in an epoch before that epoch's replay is done
 *   (the caller's gate: Ordering), and the replay writes every segment again: so when a
 *   FLUSH covers a record, the server of this epoch holds that record's data.
 *
 *   ack W (seq s) ──► record: cut [start, end) from older segments, insert W's segment
 *   ack W with FUA ─► cut only (durable already)
 *   W failed ───────► nothing: the older record still owns the range
 *   FLUSH sent ─────► mark = { seq, epoch }
 *   FLUSH ok ───────► flushed(mark): same epoch? drop records with seq < mark.seq
 *   connection lost ► newEpoch(): every segment must be replayed before anything is sent
 *   replay done ────► replayed(epoch)
 *
 * Memory: the ring holds at most `limit` bytes of copies and the ledger at most MAX_RECORDS
 * records; segments are at most twice the records (a write inside an older one splits it).
 * Every operation is O(log n) plus the segments it touches, except flushed() and pieces(),
 * which are O(n) and run once per FLUSH and per replay.
 */
export type PieceKind = 'data' | 'zero' | 'trim'

export interface LedgerRecord {
  /** Byte offsets as numbers (exact: the ledger keeps nothing past 2^53). */
  readonly start: number
  readonly end: number
  readonly kind: PieceKind
  /** Acknowledgement order. */
  readonly seq: number
  /**
   * The oldest record whose content this one replaced (its seq; seq itself when none): if this
   * one is lost, what those held in its range is gone too, so FLUSHes that vouched for them
   * since must hear of it.
   */
  readonly replaced: number
  /** The epoch whose server holds it: where it was acknowledged, or replayed since (-1: not known). */
  epoch: number
  /** The bytes to write again (data records): a view of the ring, or the caller's buffer while borrowed. */
  data: Uint8Array | null
  /** `data` is the caller's: valid only until its caller is answered (keep() or lose() first). */
  borrowed: boolean
  /** Where the copy sits in the ring, and how much of the ring it holds. */
  at: number
  footprint: number
  /** Not yet covered by a FLUSH. */
  live: boolean
}

interface Segment {
  start: number
  end: number
  readonly rec: LedgerRecord
}

export interface Piece {
  readonly start: bigint
  readonly end: bigint
  readonly kind: PieceKind
  /** The bytes of [start, end) for data pieces; valid until the next flushed(). */
  readonly data: Uint8Array | undefined
}

/** Sequence numbers from min to max (not all of them need be lost writes: conservative). */
interface SeqRange {
  readonly min: number
  readonly max: number
}

function merge (a: SeqRange | null, b: SeqRange): SeqRange {
  return a === null ? b : { min: Math.min(a.min, b.min), max: Math.max(a.max, b.max) }
}

/** What of `range` is at or past `seq` (conservatively: from seq on). */
function below (range: SeqRange | null, seq: number): SeqRange | null {
  if (range === null || range.max < seq) return null
  return range.min >= seq ? range : { min: seq, max: range.max }
}

/** Lost writes owed to FLUSHes, and from which FLUSH call on they were told (Infinity: not yet). */
interface Owed extends SeqRange {
  readonly told: number
}

/** A FLUSH call: the ledger's seq when it was called, and its number. */
export interface FlushCall {
  readonly seq: number
  readonly call: number
}

export interface FlushMark {
  readonly seq: number
  readonly epoch: number
}

/** Records kept at most: past half of it the ledger wants a FLUSH; past all of it writes are borrowed or lost. */
export const MAX_RECORDS = 1 << 16

const MAX_EXACT = BigInt(Number.MAX_SAFE_INTEGER)

export class WriteLedger {
  readonly #limit: number
  #ring: Buffer | null = null
  #used = 0
  #head = 0
  #tail = 0
  /** Live records, oldest first, from #first. */
  readonly #records: LedgerRecord[] = []
  #first = 0
  /** Disjoint, sorted by start. */
  #segments: Segment[] = []
  #seq = 0
  #epoch = 0
  #replayedEpoch = 0
  /** Acknowledged writes that could not be kept, not yet covered by a FLUSH (their seqs). */
  #pendingLost: SeqRange | null = null
  /**
   * Lost writes whose epoch ended before a FLUSH covered them: every FLUSH called after one of
   * them was acknowledged fails with NBD_ERR_DURABILITY, until one such FLUSH has; from then
   * on FLUSHes called later are not told again (`told`), while those called before still are.
   */
  #owed: Owed[] = []
  /**
   * Ranges whose acknowledged content was lost when a replay was abandoned: a read there fails
   * rather than return older data, until a write there is acknowledged. Sorted, disjoint.
   */
  #poisoned: Array<{ start: number, end: number }> = []
  /** FLUSH calls so far (their numbers), and those not yet answered. */
  #flushCalls = 0
  readonly #openCalls = new Set<number>()

  /** `limit`: bytes of copies kept at most (0 keeps none: every write is lost on a new epoch). */
  constructor (limit: number) {
    this.#limit = limit
  }

  get limit (): number { return this.#limit }
  get epoch (): number { return this.#epoch }
  /** This epoch's replay is done: requests may be sent. */
  get replayed (): boolean { return this.#replayedEpoch === this.#epoch }
  /** Ring bytes in use. */
  get bytes (): number { return this.#used }
  get records (): number { return this.#records.length - this.#first }
  get segments (): number { return this.#segments.length }
  /** Something acknowledged is not yet covered by a FLUSH. */
  get dirty (): boolean { return this.records > 0 || this.#pendingLost !== null }
  /** Time for an early FLUSH: half the ring, or half the records, is taken. */
  get wantsFlush (): boolean {
    return (this.#limit > 0 && this.#used * 2 >= this.#limit) || this.records * 2 >= MAX_RECORDS
  }

  /**
   * The server acknowledged a write-like command. Keeps a copy when the ring has room; else
   * borrows `payload` (the caller must keep() or lose() it before its caller is answered);
   * returns the record, or undefined when nothing needs keeping (FUA: durable already, or
   * lost).
   */
  acknowledged (offset: bigint, kind: PieceKind, length: number, fua: boolean, payload?: Uint8Array): LedgerRecord | undefined {
    const seq = this.#seq++
    // Numbers on the data path (a BigInt compare costs several times a number's): an export
    // past 2^53 bytes keeps nothing there, and says so (lost).
    if (offset + BigInt(length) > MAX_EXACT) {
      if (this.replayed) this.#lose({ min: seq, max: seq })
      else this.#owe({ min: seq, max: seq })
      return undefined
    }
    const start = Number(offset)
    const end = start + length
    const replaced = Math.min(seq, this.#cut(start, end))
    if (this.#poisoned.length > 0) this.#poisoned = this.#poisoned.flatMap((p) => p.end <= start || p.start >= end ? [p] : [
      ...(p.start < start ? [{ start: p.start, end: start }] : []),
      ...(p.end > end ? [{ start: end, end: p.end }] : [])
    ])
    if (fua) return undefined
    if ((kind === 'data' && this.#limit === 0) || this.records >= MAX_RECORDS) {
      // Acknowledged before this epoch's replay: by a connection that is being left, whose
      // server a FLUSH elsewhere need not cover. Owed at once.
      if (this.replayed) this.#lose({ min: replaced, max: seq })
      else this.#owe({ min: replaced, max: seq })
      return undefined
    }
    // Acknowledged before this epoch's replay (by a connection still draining): which server
    // holds it is not known until the replay has written it.
    const rec: LedgerRecord = { start, end, kind, seq, replaced, epoch: this.replayed ? this.#epoch : -1, data: null, borrowed: false, at: this.#head, footprint: 0, live: true }
    if (this.#used === 0) this.#head = this.#tail = rec.at = 0
    if (kind === 'data') {
      if (!this.#copy(rec, payload!)) {
        rec.data = payload!
        rec.borrowed = true
      }
    }
    this.#records.push(rec)
    this.#insert({ start, end, rec })
    return rec
  }

  /** A borrowed record into the ring, if there is room now. True when the caller's buffer is free. */
  keep (rec: LedgerRecord): boolean {
    if (!rec.borrowed) return true
    if (!rec.live) {
      rec.borrowed = false
      rec.data = null
      return true
    }
    // Only the newest record may take ring space late: the ring frees in acknowledgement order.
    if (this.#records[this.#records.length - 1] !== rec || !this.#copy(rec, rec.data!)) return false
    rec.borrowed = false
    return true
  }

  /**
   * A borrowed record's caller must be answered without a copy: the write is lost. Returns
   * true when its epoch already ended (the server may have lost it too: its caller must not be
   * told it succeeded), false when the server of this epoch still holds it.
   */
  lose (rec: LedgerRecord): boolean {
    if (!rec.borrowed) return false
    rec.borrowed = false
    rec.data = null
    if (!rec.live) return false
    // Its segments go (it already cut what it overwrote). Lost in an epoch that already ended,
    // it is owed now; else when this epoch ends before a FLUSH covers it.
    this.#segments = this.#segments.filter((s) => s.rec !== rec)
    const lost = { min: rec.replaced, max: rec.seq }
    if (rec.epoch === this.#epoch) {
      this.#lose(lost)
      return false
    }
    this.#owe(lost)
    return true
  }

  /** A FLUSH is being sent (each send: a FLUSH sent again after a reconnect marks again). */
  mark (): FlushMark {
    return { seq: this.#seq, epoch: this.#epoch }
  }

  /**
   * A FLUSH sent at `mark` succeeded. Covers every record acknowledged before it, if the epoch
   * did not change since; returns whether it did cover them.
   */
  flushed (mark: FlushMark): boolean {
    if (mark.epoch !== this.#epoch || !this.replayed) return false
    this.#pendingLost = below(this.#pendingLost, mark.seq)
    const records = this.#records
    let covered = 0
    while (this.#first < records.length && records[this.#first]!.seq < mark.seq) {
      const rec = records[this.#first++]!
      rec.live = false
      this.#used -= rec.footprint
      covered++
    }
    if (covered === 0) return true
    if (this.#first === records.length) {
      records.length = 0
      this.#first = 0
      this.#segments = []
      this.#head = this.#tail = this.#used = 0
      return true
    }
    this.#segments = this.#segments.filter((s) => s.rec.live)
    this.#tail = records[this.#first]!.at
    if (this.#first > 1024 && this.#first * 2 > records.length) {
      records.splice(0, this.#first)
      this.#first = 0
    }
    return true
  }

  /**
   * A connection was lost that may have been a server restart: a new epoch begins, in which
   * nothing may be sent before replayed(). Writes that could not be kept are now reported.
   */
  newEpoch (): number {
    this.#epoch++
    if (this.#pendingLost !== null) {
      this.#owe(this.#pendingLost)
      this.#pendingLost = null
    }
    return this.#epoch
  }

  /**
   * The replay of `epoch` cannot be done (the server refuses it past every bound): what the
   * ledger held is lost, owed to every FLUSH that vouched for it, and requests may go again.
   */
  abandon (epoch: number): void {
    if (epoch !== this.#epoch) return
    // Reads there would return older data: they fail until a write acknowledged there.
    for (const seg of this.#segments) this.#poisoned.push({ start: seg.start, end: seg.end })
    this.#poisoned.sort((a, b) => a.start - b.start)
    const records = this.#records
    if (this.records > 0) this.#owe({ min: records[this.#first]!.seq, max: records[records.length - 1]!.seq })
    for (let i = this.#first; i < records.length; i++) records[i]!.live = false
    records.length = 0
    this.#first = 0
    this.#segments = []
    this.#head = this.#tail = this.#used = 0
    this.#replayedEpoch = epoch
  }

  /** The replay of `epoch` is done (every piece acknowledged in it). */
  replayDone (epoch: number): void {
    if (epoch !== this.#epoch) return
    this.#replayedEpoch = epoch
    for (let i = this.#first; i < this.#records.length; i++) this.#records[i]!.epoch = epoch
  }

  get anyPoisoned (): boolean {
    return this.#poisoned.length > 0
  }

  /** Whether a read of [start, end) would meet content lost with an abandoned replay. */
  poisoned (start: bigint, end: bigint): boolean {
    const s = Number(start)
    const e = Number(end)
    for (const p of this.#poisoned) if (p.start < e && s < p.end) return true
    return false
  }

  /** A FLUSH is called (before it waits for its turn): what it will vouch for. */
  flushCalled (): FlushCall {
    const call = { seq: this.#seq, call: this.#flushCalls++ }
    this.#openCalls.add(call.call)
    return call
  }

  /**
   * The FLUSH called at `called` is over (`answered`: it succeeded on the wire): whether it
   * must fail with NBD_ERR_DURABILITY, because a write acknowledged before it was called was
   * lost with its epoch and this FLUSH was called before any FLUSH was told so.
   */
  lostBefore (called: FlushCall, answered = true): boolean {
    this.#openCalls.delete(called.call)
    let lost = false
    // A FLUSH that failed for another reason vouched for nothing, and told nothing.
    if (answered) for (const o of this.#owed) if (o.min < called.seq && called.call < o.told) lost = true
    if (lost) {
      // Told now: FLUSHes called from here on are not told of what came before this one.
      const next: Owed[] = []
      for (const o of this.#owed) {
        if (o.min >= called.seq || o.told !== Infinity) {
          next.push(o)
          continue
        }
        next.push({ min: o.min, max: Math.min(o.max, called.seq - 1), told: this.#flushCalls })
        if (o.max >= called.seq) next.push({ min: called.seq, max: o.max, told: Infinity })
      }
      this.#owed = next
    }
    // What every FLUSH called before it was told has heard is no longer kept.
    let oldest = this.#flushCalls
    for (const c of this.#openCalls) if (c < oldest) oldest = c
    this.#owed = this.#owed.filter((o) => o.told === Infinity || o.told > oldest)
    return lost
  }

  #owe (range: SeqRange): void {
    const open = this.#owed.find((o) => o.told === Infinity)
    if (open === undefined) this.#owed.push({ ...range, told: Infinity })
    else this.#owed[this.#owed.indexOf(open)] = { min: Math.min(open.min, range.min), max: Math.max(open.max, range.max), told: Infinity }
  }

  /** Every segment, in offset order: what a replay writes. */
  pieces (): Piece[] {
    return this.#segments.map((s) => {
      const rec = s.rec
      const from = s.start - rec.start
      const to = s.end - rec.start
      return { start: BigInt(s.start), end: BigInt(s.end), kind: rec.kind, data: rec.kind === 'data' ? rec.data!.subarray(from, to) : undefined }
    })
  }

  #lose (range: SeqRange): void {
    this.#pendingLost = merge(this.#pendingLost, range)
  }

  /** Copies `payload` into the ring for `rec`; false when there is no room. */
  #copy (rec: LedgerRecord, payload: Uint8Array): boolean {
    const bytes = payload.length
    const place = this.#place(bytes)
    if (place === undefined) return false
    this.#ring!.set(payload, place.at)
    this.#head = place.at + bytes
    this.#used += place.footprint
    rec.at = place.at
    rec.footprint = place.footprint
    rec.data = this.#ring!.subarray(place.at, place.at + bytes)
    if (this.#records[this.#first] === rec || this.records === 0) this.#tail = place.at
    return true
  }

  /**
   * Where `bytes` fit in the ring, and how much of it they take: the unused end of the ring
   * is charged to a record that wraps to the start, and freed with it.
   */
  #place (bytes: number): { at: number, footprint: number } | undefined {
    if (bytes === 0) return { at: this.#head, footprint: 0 }
    if (this.#used + bytes > this.#limit) return undefined
    this.#ring ??= Buffer.allocUnsafe(this.#limit)
    if (this.#used === 0) {
      this.#head = this.#tail = 0
      return { at: 0, footprint: bytes }
    }
    if (this.#head >= this.#tail) {
      if (this.#limit - this.#head >= bytes) return { at: this.#head, footprint: bytes }
      const gap = this.#limit - this.#head
      if (this.#tail >= bytes && this.#used + bytes + gap <= this.#limit) return { at: 0, footprint: bytes + gap }
      return undefined
    }
    return this.#tail - this.#head >= bytes ? { at: this.#head, footprint: bytes } : undefined
  }

  /** Removes [start, end) from every segment; returns the oldest seq it cut from (Infinity: none). */
  #cut (start: number, end: number): number {
    const segs = this.#segments
    let i = this.#firstEndingAfter(start)
    if (i >= segs.length || segs[i]!.start >= end) return Infinity
    const s = segs[i]!
    if (s.start < start && s.end > end) {
      // A hole in the middle: split in two.
      segs.splice(i + 1, 0, { start: end, end: s.end, rec: s.rec })
      s.end = start
      return s.rec.seq
    }
    let oldest = Infinity
    if (s.start < start) {
      oldest = s.rec.seq
      s.end = start
      i++
    }
    let j = i
    while (j < segs.length && segs[j]!.end <= end) {
      if (segs[j]!.rec.seq < oldest) oldest = segs[j]!.rec.seq
      j++
    }
    if (j < segs.length && segs[j]!.start < end) {
      if (segs[j]!.rec.seq < oldest) oldest = segs[j]!.rec.seq
      segs[j]!.start = end
    }
    if (j > i) segs.splice(i, j - i)
    return oldest
  }

  #insert (seg: Segment): void {
    const segs = this.#segments
    // After #cut nothing overlaps: the first segment ending after seg.start starts after it.
    const i = this.#firstEndingAfter(seg.start)
    if (i === segs.length) segs.push(seg)
    else segs.splice(i, 0, seg)
  }

  /** The first segment whose end is past `at` (binary search). */
  #firstEndingAfter (at: number): number {
    const segs = this.#segments
    let lo = 0
    let hi = segs.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (segs[mid]!.end > at) hi = mid
      else lo = mid + 1
    }
    return lo
  }
}
