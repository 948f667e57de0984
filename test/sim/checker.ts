/**
 * The checker: what the client promised, judged on the history of calls and on what the
 * simulated disk holds, never on the client's internal state.
 *
 * Every block-aligned write-like call gets an id (zeroes and trims write content id 0); each
 * block of a write carries its id, so a block's bytes say which call put them there.
 *
 *   A FLUSH that succeeded vouches, for each block, for the last call (in call order, which is
 *   the order the client applies overlapping writes in) acknowledged before the FLUSH was
 *   called. From then on the durable store must hold, in that block, that call's content or
 *   that of a later call to the block (which may have run on the server whatever its caller
 *   was told), never anything older: after any crash, restart and replay.
 *   A FLUSH that failed with NBD_ERR_DURABILITY said that writes acknowledged before it may be
 *   gone: they are vouched for by no later FLUSH.
 *
 *   A READ returns, for each block, the last call acknowledged before the READ was called, or
 *   a later one; never older (the replay after a crash must come before any read).
 */
export type OpKind = 'write' | 'zero' | 'trim' | 'read' | 'flush'

export interface Op {
  readonly index: number
  readonly kind: OpKind
  readonly block: number
  readonly blocks: number
  /** The content id its blocks carry (writes), 0 for zero and trim. */
  readonly id: number
  /** History position at the call. */
  readonly calledAt: number
  /** History position once it settled (-1: not yet), and how. */
  settledAt: number
  ok: boolean
  error: string
}

export class History {
  readonly ops: Op[] = []
  #clock = 0
  readonly blocks: number
  readonly blockSize: number
  /** Each successful FLUSH's call position, with the durability failure in force then. */
  readonly #vouches: Array<{ readonly at: number, readonly after: number }> = []
  /** FLUSHes that failed with NBD_ERR_DURABILITY: where they were called, and answered. */
  readonly #resets: Array<{ readonly calledAt: number, readonly settledAt: number }> = []

  constructor (blocks: number, blockSize: number) {
    this.blocks = blocks
    this.blockSize = blockSize
  }

  call (kind: OpKind, block: number, blocks: number, id: number): Op {
    const op: Op = { index: this.ops.length, kind, block, blocks, id, calledAt: this.#clock++, settledAt: -1, ok: false, error: '' }
    this.ops.push(op)
    return op
  }

  settle (op: Op, ok: boolean, error = ''): void {
    op.settledAt = this.#clock++
    op.ok = ok
    op.error = error
    if (op.kind === 'flush') {
      if (ok) this.#vouches.push({ at: op.calledAt, after: this.#resetBefore(op.calledAt) })
      else if (error.includes('NBD_ERR_DURABILITY')) this.#resets.push({ calledAt: op.calledAt, settledAt: op.settledAt })
    }
  }

  /**
   * The content ids block `b` may hold for a cut at history position `at` (calls acknowledged
   * before it, and after `after`); undefined when nothing constrains it.
   */
  acceptable (b: number, at: number, after: number): Set<number> | undefined {
    let newest: Op | undefined
    for (const op of this.ops) {
      if (op.kind === 'read' || op.kind === 'flush' || !op.ok) continue
      if (op.settledAt < 0 || op.settledAt >= at || op.settledAt <= after) continue
      if (b < op.block || b >= op.block + op.blocks) continue
      if (newest === undefined || op.index > newest.index) newest = op
    }
    if (newest === undefined) return undefined
    const ids = new Set([newest.id])
    for (const op of this.ops) {
      if (op.kind === 'read' || op.kind === 'flush' || op.index <= newest.index) continue
      if (b >= op.block && b < op.block + op.blocks) ids.add(op.id)
    }
    return ids
  }

  /** The durable store against the newest vouching FLUSH: a message per wrong block. */
  checkDurable (durable: Buffer): string | undefined {
    for (const v of this.#vouches) {
      const wrong = this.#check(durable, 0, v.at, v.after, `durable store after the FLUSH called at ${v.at} succeeded`)
      if (wrong !== undefined) return wrong
    }
    return undefined
  }

  /** A READ's bytes (blocks from `op.block`). */
  checkRead (op: Op, data: Buffer): string | undefined {
    return this.#check(data, op.block, op.calledAt, this.#resetBefore(op.calledAt), `READ #${op.index}`)
  }

  /**
   * What a call at `at` was told before it was made: the newest durability failure answered
   * before then (writes acknowledged before that failing FLUSH was called are not vouched for).
   */
  #resetBefore (at: number): number {
    let after = -1
    for (const r of this.#resets) if (r.settledAt < at && r.calledAt > after) after = r.calledAt
    return after
  }

  #check (data: Buffer, first: number, at: number, after: number, what: string): string | undefined {
    const n = data.length / this.blockSize
    for (let i = 0; i < n; i++) {
      const b = first + i
      const id = blockId(data.subarray(i * this.blockSize, (i + 1) * this.blockSize))
      const ids = this.acceptable(b, at, after)
      if (ids === undefined || ids.has(id)) continue
      return `${what}: block ${b} holds ${id === -1 ? 'torn content' : `content of call ${id}`}, expected one of ${[...ids].join(', ')}`
    }
    return undefined
  }
}

/** The bytes of one block of a write with content id `id`. */
export function blockContent (id: number, blockSize: number): Buffer {
  const buf = Buffer.alloc(blockSize)
  for (let i = 0; i < blockSize; i += 4) buf.writeUInt32BE(id, i)
  return buf
}

/** Which call's content a block holds; -1 when it is not one call's (torn). */
export function blockId (block: Buffer): number {
  const id = block.readUInt32BE(0)
  for (let i = 4; i < block.length; i += 4) if (block.readUInt32BE(i) !== id) return -1
  return id
}
