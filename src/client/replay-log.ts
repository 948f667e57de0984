/**
 * Acknowledged writes that no FLUSH has covered yet, kept so that they can be written again if
 * the server may have lost them.
 *
 * A server with a volatile cache (it advertises NBD_FLAG_SEND_FLUSH) may acknowledge a write
 * and then crash before the write reaches stable storage. Without this log the client would
 * reconnect, send the next FLUSH, get success, and tell its caller the data is durable when
 * it is gone. With it, every new connection first writes back the latest acknowledged content
 * of every range written since the last FLUSH, so that the FLUSH that follows vouches for
 * data the server really has. After a benign restart (nothing lost) the replay rewrites what is
 * already there.
 *
 *   write acked ──► record(range, copy of payload)      [ring of `limit` bytes]
 *   write granted ─► supersede(range)                   a newer write owns the range now
 *   FLUSH sent ────► marker = flushSent()               covers records up to the marker
 *   FLUSH acked ───► flushDone(marker)                  their space is free again
 *   half full ─────► the client sends a FLUSH early, in the background (when full, the
 *                    acknowledgement waits for it)
 *   reconnect ─────► pieces() replayed before anything else on the new connection
 *
 * Records are kept in acknowledgement order in a ring buffer (no allocation per write, no
 * page faults: the copy is the only cost); a range overwritten later is cut out of the older
 * record, so each byte has at most one piece, the newest. Pieces are indexed by 1 MiB bucket so
 * that supersede() looks only at the buckets a write touches.
 *
 * What the log cannot cover it says: `complete` turns false when a write could not be kept
 * (disabled, or the background FLUSH failed and the ring was full), and then a reconnect that
 * may have lost data makes the next FLUSH fail rather than vouch for it.
 */

export type PieceKind = 'data' | 'zero' | 'trim'

interface LogRecord {
  readonly gen: number
  /** Where the record's bytes sit in the ring (data records only). */
  readonly at: number
  readonly bytes: number
  readonly pieces: Set<Piece>
}

export interface Piece {
  readonly start: bigint
  readonly end: bigint
  readonly kind: PieceKind
  /** The bytes of [start, end) for data pieces: a view of the ring, valid until the next flushDone(). */
  readonly data: Buffer | undefined
  readonly record: LogRecord
}

const BUCKET_SHIFT = 20n

export class ReplayLog {
  readonly #limit: number
  #ring: Buffer | null = null
  /** Ring bytes in use, from the oldest live record (#tail) to the next free byte (#head). */
  #used = 0
  #head = 0
  #tail = 0
  readonly #records: LogRecord[] = []
  #first = 0
  readonly #buckets = new Map<number, Set<Piece>>()
  #pieces = 0
  #gen = 0
  /** The generation of the newest acknowledged write, and of the newest FLUSH that succeeded. */
  #ackedGen = -1
  #flushedGen = -1
  #complete: boolean
  /** When the log stopped covering everything: a FLUSH sent after it makes it whole again. */
  #lostGen = -1

  /** `limit`: bytes of write payload kept at most (0 keeps nothing). */
  constructor (limit: number) {
    this.#limit = limit
    this.#complete = limit > 0
  }

  /** The ring's size in bytes. */
  get limit (): number {
    return this.#limit
  }

  /** Every acknowledged, unflushed write is in the log. */
  get complete (): boolean {
    return this.#complete
  }

  /** Something acknowledged is not yet covered by a FLUSH. */
  get dirty (): boolean {
    return this.#ackedGen > this.#flushedGen
  }

  get bytes (): number {
    return this.#used
  }

  /** Time for an early FLUSH: half the ring is taken. */
  get wantsFlush (): boolean {
    return this.#limit > 0 && this.#used * 2 >= this.#limit
  }

  /** A write-like request now owns [start, end): older content there is no longer the newest. */
  supersede (start: bigint, end: bigint): void {
    if (this.#pieces === 0) return
    for (const piece of this.#overlapping(start, end)) {
      this.#removePiece(piece)
      if (piece.start < start) this.#addPiece(piece.record, piece.start, start, piece.kind, piece.data?.subarray(0, Number(start - piece.start)))
      if (piece.end > end) this.#addPiece(piece.record, end, piece.end, piece.kind, piece.data?.subarray(Number(end - piece.start)))
    }
  }

  /**
   * Records an acknowledged write (a copy of `data`), zero or trim. Returns false when the ring
   * has no room: a FLUSH frees it (try again after one), or give up with lose().
   */
  record (start: bigint, kind: PieceKind, length: number, data?: Uint8Array): boolean {
    if (!this.#complete) {
      this.#ackedGen = this.#gen
      return true
    }
    const bytes = kind === 'data' ? length : 0
    let at = 0
    let footprint = 0
    if (bytes > 0) {
      const place = this.#place(bytes)
      if (place === undefined) return false
      at = place.at
      footprint = place.footprint
      this.#ring!.set(data!, at)
      this.#head = at + bytes
      this.#used += footprint
    }
    this.#ackedGen = this.#gen
    const record: LogRecord = { gen: this.#gen, at, bytes: footprint, pieces: new Set() }
    this.#records.push(record)
    this.#addPiece(record, start, start + BigInt(length), kind, bytes > 0 ? this.#ring!.subarray(at, at + bytes) : undefined)
    return true
  }

  /** A write could not be kept: from now on the log no longer covers everything. */
  lose (): void {
    this.#ackedGen = this.#gen
    this.#complete = false
    this.#lostGen = this.#gen
  }

  /** A FLUSH is being sent; returns its marker for flushDone(). */
  flushSent (): number {
    return this.#gen++
  }

  /** The FLUSH with `marker` succeeded: everything acknowledged before it was sent is durable. */
  flushDone (marker: number): void {
    if (marker > this.#flushedGen) this.#flushedGen = marker
    if (!this.#complete && this.#limit > 0 && marker >= this.#lostGen) this.#complete = true
    while (this.#first < this.#records.length && this.#records[this.#first]!.gen <= marker) {
      const record = this.#records[this.#first++]!
      for (const piece of record.pieces) this.#removePiece(piece)
      this.#used -= record.bytes
    }
    if (this.#first === this.#records.length) {
      this.#records.length = 0
      this.#first = 0
      this.#head = this.#tail = this.#used = 0
    } else {
      this.#tail = this.#records[this.#first]!.at
      if (this.#first > 1024 && this.#first * 2 > this.#records.length) {
        this.#records.splice(0, this.#first)
        this.#first = 0
      }
    }
  }

  /** The newest content of every range written since the last FLUSH, oldest record first. */
  pieces (): Piece[] {
    const out: Piece[] = []
    for (let i = this.#first; i < this.#records.length; i++) out.push(...this.#records[i]!.pieces)
    return out
  }

  /**
   * Where `bytes` fit in the ring, and how much of it they take: the unused end of the ring
   * is charged to a record that wraps to the start, and freed with it.
   */
  #place (bytes: number): { at: number, footprint: number } | undefined {
    if (this.#used + bytes > this.#limit) return undefined
    this.#ring ??= Buffer.allocUnsafe(this.#limit)
    if (this.#used === 0) {
      this.#head = this.#tail = 0
      return { at: 0, footprint: bytes }
    }
    if (this.#head >= this.#tail) {
      // Live bytes are [tail, head): room after head, or else at the start, before tail.
      if (this.#limit - this.#head >= bytes) return { at: this.#head, footprint: bytes }
      const gap = this.#limit - this.#head
      if (this.#tail >= bytes && this.#used + bytes + gap <= this.#limit) return { at: 0, footprint: bytes + gap }
      return undefined
    }
    // Wrapped: live bytes are [tail, end) and [0, head); the room is [head, tail).
    return this.#tail - this.#head >= bytes ? { at: this.#head, footprint: bytes } : undefined
  }

  *#overlapping (start: bigint, end: bigint): Generator<Piece> {
    const seen = new Set<Piece>()
    const last = Number((end - 1n) >> BUCKET_SHIFT)
    for (let b = Number(start >> BUCKET_SHIFT); b <= last; b++) {
      const bucket = this.#buckets.get(b)
      if (bucket === undefined) continue
      for (const piece of [...bucket]) {
        if (piece.start < end && start < piece.end && !seen.has(piece)) {
          seen.add(piece)
          yield piece
        }
      }
    }
  }

  #addPiece (record: LogRecord, start: bigint, end: bigint, kind: PieceKind, data: Buffer | undefined): void {
    const piece: Piece = { start, end, kind, data, record }
    record.pieces.add(piece)
    this.#pieces++
    const last = Number((end - 1n) >> BUCKET_SHIFT)
    for (let b = Number(start >> BUCKET_SHIFT); b <= last; b++) {
      let bucket = this.#buckets.get(b)
      if (bucket === undefined) this.#buckets.set(b, bucket = new Set())
      bucket.add(piece)
    }
  }

  #removePiece (piece: Piece): void {
    if (!piece.record.pieces.delete(piece)) return
    this.#pieces--
    const last = Number((piece.end - 1n) >> BUCKET_SHIFT)
    for (let b = Number(piece.start >> BUCKET_SHIFT); b <= last; b++) {
      const bucket = this.#buckets.get(b)
      if (bucket === undefined) continue
      bucket.delete(piece)
      if (bucket.size === 0) this.#buckets.delete(b)
    }
  }
}
