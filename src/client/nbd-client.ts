/**
 * NbdClient: the public face. It checks every request against what the server advertised
 * (nothing the server did not offer is sent), makes byte-granular requests correct for the
 * server's block size (read-modify-write for unaligned writes), splits large requests at the
 * maximum payload, orders writes (Ordering), and spreads requests over the connections.
 *
 *   caller ──► NbdClient (checks, shaping) ──► Ordering (writes) ──► EnginePool ──► Engine × N
 *
 * Numbers: offsets and lengths are taken as numbers or bigints; what the client hands back
 * (size, extents) is a number, exact up to 2^53 bytes (8 PiB), and an OffsetRangeError
 * (NBD_ERR_RANGE) past that: ask for `sizeBigInt` or `{ bigint: true }` there, as fs.stat does.
 */
import { EventEmitter } from 'node:events'
import {
  InvalidArgumentError, NotSupportedError, OffsetRangeError, ProtocolError
} from '../errors.ts'
import { NBD_CMD, NBD_CMD_FLAG, NBD_FLAG, NBD_STATE_DIRTY } from '../protocol/constants.ts'
import { listExports, type ListedExport } from '../connector/list-exports.ts'
import type { ExportInfo } from '../connector/export-info.ts'
import type { StatsSnapshot } from '../stats/client-stats.ts'
import type { NbdClientState, StateChange } from './engine/lifecycle.ts'
import type { Command } from './engine/request.ts'
import { resolveOptions, type NbdClientOptions, type ResolvedOptions } from './options.ts'
import { Ordering } from './ordering.ts'
import { EnginePool, type ConnectionInfo } from './pool.ts'
import {
  alignDown, alignUp, bigPieces, checkRange, minBig, patchEdge, pieces, planReadModifyWrite, statusRange,
  toBig, toLength, trimExtents, widen, type Offset
} from './shaping.ts'

export type { Offset }

export interface RequestOptions {
  readonly signal?: AbortSignal
}

export interface WriteOptions extends RequestOptions {
  /** Force unit access: the reply comes once the data is durable. Emulated with FLUSH when the server lacks FUA. */
  readonly fua?: boolean
}

export interface ZeroOptions extends WriteOptions {
  /** Keep the range allocated (NBD_CMD_FLAG_NO_HOLE): fallocate's ZERO_RANGE. */
  readonly noHole?: boolean
  /** Fail with ENOTSUP unless zeroing is faster than writing zeroes (NBD_CMD_FLAG_FAST_ZERO). */
  readonly fastZero?: boolean
}

export interface BlockStatusOptions extends RequestOptions {
  /** Ask for a single extent per context (NBD_CMD_FLAG_REQ_ONE). */
  readonly reqOne?: boolean
  /** Offsets as bigints (exact past 2^53). */
  readonly bigint?: boolean
}

export interface MapOptions extends RequestOptions {
  /** The meta context to walk. @default 'base:allocation' */
  readonly context?: string
  /** Offsets as bigints (exact past 2^53). */
  readonly bigint?: boolean
}

/** A run of bytes with one status: what blockStatus() and map() hand back. */
export interface Extent<O extends number | bigint = number> {
  readonly offset: O
  readonly length: number
  /** Status bits of the context (base:allocation: HOLE=1, ZERO=2). */
  readonly flags: number
}

/** Extents per meta context name, starting at the requested offset. */
export type BlockStatus<O extends number | bigint = number> = Map<string, Array<Extent<O>>>

/** A state change of one connection (numbered from 1, of `connections`). */
export interface ClientStateChange extends StateChange {
  readonly connection: number
  readonly connections: number
}

/** Status requests and trims/zeroes are split at this size (a power of two, so always aligned). */
const MAX_EFFECT = 1 << 30
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER)

export class NbdClient extends EventEmitter<{ state: [ClientStateChange] }> {
  readonly #options: ResolvedOptions
  readonly #pool: EnginePool
  readonly #ordering: Ordering
  readonly #info: ExportInfo
  /** Alignment the server requires (its minimum block size, else 1). */
  readonly #minBlock: number
  readonly #minBlockBig: bigint
  /** Largest READ/WRITE payload we send: a multiple of #minBlock. */
  readonly #maxPayload: number
  /** The size as a number when it is one exactly (fast range checks); else -1. */
  readonly #sizeNumber: number
  #zeroes: Buffer | undefined

  private constructor (options: ResolvedOptions, pool: EnginePool, ordering: Ordering) {
    super()
    this.#options = options
    this.#pool = pool
    this.#ordering = ordering
    ordering.flushEngine = () => pool.pick()
    this.#info = pool.engines[0]!.info
    this.#minBlock = this.#info.blockSize?.minimum ?? 1
    this.#minBlockBig = BigInt(this.#minBlock)
    const max = Math.min(options.maxRequestSize, this.#info.blockSize?.maximum ?? 0xffffffff)
    this.#maxPayload = Math.max(this.#minBlock, max - (max % this.#minBlock))
    this.#sizeNumber = this.#info.size <= MAX_SAFE ? Number(this.#info.size) : -1
    const connections = pool.engines.length
    pool.engines.forEach((engine, i) => {
      engine.on('state', (change) => { this.emit('state', { ...change, connection: i + 1, connections }) })
    })
  }

  /**
   * Connects and negotiates. `target` is an NBD URI or an options bag; `options` adds to it.
   * With `connections` > 1 the first connection must advertise CAN_MULTI_CONN.
   */
  static async connect (target: string | NbdClientOptions, options: NbdClientOptions = {}): Promise<NbdClient> {
    const resolved = resolveOptions(target, options)
    const signal = typeof target === 'string' ? options.signal : target.signal ?? options.signal
    let ordering: Ordering | undefined
    const pool = await EnginePool.open(resolved, async (channel) => { await ordering?.recover(channel) }, signal)
    const info = pool.engines[0]!.info
    ordering = new Ordering({ logBytes: resolved.replayLog, volatileCache: (info.flags & NBD_FLAG.SEND_FLUSH) !== 0 && (info.flags & NBD_FLAG.READ_ONLY) === 0 })
    return new NbdClient(resolved, pool, ordering)
  }

  /** Lists the server's exports (NBD_OPT_LIST), each with what NBD_OPT_INFO says about it. */
  static async list (target: string | NbdClientOptions, options: NbdClientOptions = {}): Promise<ListedExport[]> {
    const resolved = resolveOptions(target, options)
    const signal = typeof target === 'string' ? options.signal : target.signal ?? options.signal
    return await listExports({ open: resolved.open, handshakeTimeout: resolved.handshakeTimeout, tls: resolved.tls, ...(signal !== undefined && { signal }) })
  }

  /** What the server told us about the export (from the first connection). */
  get info (): ExportInfo { return this.#info }

  /** The export size in bytes; NBD_ERR_RANGE past 2^53 (use sizeBigInt there). */
  get size (): number {
    if (this.#sizeNumber < 0) throw new OffsetRangeError(`the export is ${this.#info.size} bytes, more than a number holds exactly: use sizeBigInt`)
    return this.#sizeNumber
  }

  /** The export size, exact at any size. */
  get sizeBigInt (): bigint { return this.#info.size }
  get exportName (): string { return this.#options.exportName }
  /** The state of the first connection (QEMU's CONNECTED, CONNECTING_WAIT, ...). */
  get state (): NbdClientState { return this.#pool.engines[0]!.state }
  /** Every connection's state, connection 1 first. */
  get states (): NbdClientState[] { return this.#pool.states }
  get connections (): number { return this.#pool.engines.length }
  /** Meta contexts selected for blockStatus, by name. */
  get metaContexts (): string[] { return [...this.#info.contexts.values()] }
  get stats (): StatsSnapshot { return this.#pool.stats() }
  get maxInFlight (): number { return this.#pool.engines[0]!.maxInFlight }

  /** Changes the per-connection request limit at run time. */
  set maxInFlight (n: number) {
    if (!Number.isInteger(n) || n < 1 || n > 4096) throw new InvalidArgumentError(`maxInFlight must be an integer from 1 to 4096, not ${n}`)
    for (const e of this.#pool.engines) e.maxInFlight = n
  }

  /** The largest READ/WRITE sent in one request. */
  get maxPayload (): number { return this.#maxPayload }
  /** The alignment requests are made to (the server's minimum block size, or 1). */
  get minBlockSize (): number { return this.#minBlock }

  /** The error of the last failed connect attempt, if any. */
  get lastConnectError (): Error | null {
    return this.#pool.engines.map((e) => e.lastConnectError).find((e) => e !== null) ?? null
  }

  // Capabilities, as libnbd names them (nbd_can_flush, nbd_is_read_only, ...).
  get canFlush (): boolean { return this.#can(NBD_FLAG.SEND_FLUSH) }
  get canFua (): boolean { return this.#can(NBD_FLAG.SEND_FUA) }
  get canTrim (): boolean { return this.#can(NBD_FLAG.SEND_TRIM) }
  /** NBD_CMD_WRITE_ZEROES is offered (writeZeroes/punchHole work without it, by writing zeroes). */
  get canZero (): boolean { return this.#can(NBD_FLAG.SEND_WRITE_ZEROES) }
  get canFastZero (): boolean { return this.#can(NBD_FLAG.SEND_FAST_ZERO) }
  get canCache (): boolean { return this.#can(NBD_FLAG.SEND_CACHE) }
  get canDf (): boolean { return this.#can(NBD_FLAG.SEND_DF) }
  get canMultiConn (): boolean { return this.#can(NBD_FLAG.CAN_MULTI_CONN) }
  /** A meta context was negotiated, so blockStatus() and map() work. */
  get canBlockStatus (): boolean { return this.#info.contexts.size > 0 }
  get isReadOnly (): boolean { return this.#can(NBD_FLAG.READ_ONLY) }
  get isRotational (): boolean { return this.#can(NBD_FLAG.ROTATIONAL) }

  #can (flag: number): boolean {
    return (this.#info.flags & flag) !== 0
  }

  // ── reads ─────────────────────────────────────────────────────────────────────────────

  async read (offset: Offset, length: number, options: RequestOptions = {}): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(toLength(length))
    await this.readInto(buf, offset, options)
    return buf
  }

  /** Fills `buffer` from `offset`. Any offset and length inside the export are fine. */
  readInto (buffer: Uint8Array, offset: Offset, options: RequestOptions = {}): Promise<void> {
    const dest = asBuffer(buffer)
    const length = dest.length
    // The common request (aligned, one payload, a number offset) goes straight to an engine.
    if (typeof offset === 'number' && this.#minBlock === 1 && length > 0 && length <= this.#maxPayload &&
        Number.isSafeInteger(offset) && offset >= 0 && offset + length <= this.#sizeNumber) {
      return this.#pool.pick().submit({ type: NBD_CMD.READ, flags: 0, offset: BigInt(offset), length, dest }, options.signal) as Promise<unknown> as Promise<void>
    }
    return this.#readInto(dest, offset, options.signal)
  }

  async #readInto (dest: Buffer, offset: Offset, signal: AbortSignal | undefined): Promise<void> {
    const start = toBig(offset)
    checkRange(start, dest.length, this.#info.size)
    if (dest.length === 0) return
    const w = widen(start, dest.length, this.#minBlockBig, this.#info.size)
    if (w.head === 0 && w.end === start + BigInt(dest.length)) {
      await this.#readAligned(dest, start, signal)
      return
    }
    // Unaligned: read the whole blocks into a bounce buffer and copy out what was asked.
    const bounce = Buffer.allocUnsafe(Number(w.end - w.first))
    await this.#readAligned(bounce, w.first, signal)
    bounce.copy(dest, 0, w.head, w.head + dest.length)
  }

  #readAligned (dest: Buffer, offset: bigint, signal: AbortSignal | undefined): Promise<void> {
    return settle(pieces(dest.length, this.#maxPayload).map(([at, n]) =>
      this.#pool.pick().submit({ type: NBD_CMD.READ, flags: 0, offset: offset + BigInt(at), length: n, dest: dest.subarray(at, at + n) }, signal)))
  }

  // ── writes ────────────────────────────────────────────────────────────────────────────

  /** Writes `buffer` at `offset`. The buffer must not change until the promise settles. */
  write (buffer: Uint8Array, offset: Offset, options: WriteOptions = {}): Promise<void> {
    const length = buffer.length
    if (typeof offset === 'number' && this.#minBlock === 1 && length > 0 && length <= this.#maxPayload &&
        options.fua !== true && Number.isSafeInteger(offset) && offset >= 0 && offset + length <= this.#sizeNumber && !this.isReadOnly) {
      return this.#ordering.write(this.#pool.pick(), { type: NBD_CMD.WRITE, flags: 0, offset: BigInt(offset), length, payload: buffer }, options.signal)
    }
    return this.#write(buffer, offset, options)
  }

  async #write (data: Uint8Array, offset: Offset, options: WriteOptions): Promise<void> {
    const start = toBig(offset)
    checkRange(start, data.length, this.#info.size)
    this.#checkWritable()
    if (data.length === 0) return
    const flags = this.#fuaFlag(options.fua)
    const w = widen(start, data.length, this.#minBlockBig, this.#info.size)
    if (w.head === 0 && w.end === start + BigInt(data.length)) await this.#writeAligned(data, start, flags, options.signal)
    else await this.#readModifyWrite(start, data, data.length, flags, options.signal)
    if (options.fua === true && flags === 0) await this.#emulateFua(options.signal)
  }

  #writeAligned (data: Uint8Array, offset: bigint, flags: number, signal: AbortSignal | undefined, locked?: RmwScope): Promise<void> {
    return settle(pieces(data.length, this.#maxPayload).map(([at, n]) =>
      this.#sendWrite({ type: NBD_CMD.WRITE, flags, offset: offset + BigInt(at), length: n, payload: data.subarray(at, at + n) }, signal, locked)))
  }

  #sendWrite (command: Command, signal: AbortSignal | undefined, scope: RmwScope | undefined): Promise<void> {
    if (scope === undefined) return this.#ordering.write(this.#pool.pick(), command, signal)
    scope.enter()
    return this.#ordering.write(this.#pool.pick(), command, signal, true, () => { scope.leave() })
  }

  /**
   * Unaligned write (or zero): under an exclusive lock of the widened range, the partial
   * first and last blocks are read, patched and written back; whole blocks in between go out
   * as they are (or as WRITE_ZEROES). The lock is held until every write it sent is done on
   * the wire, even when the caller is answered earlier.
   */
  async #readModifyWrite (start: bigint, data: Uint8Array | null, length: number, flags: number, signal: AbortSignal | undefined): Promise<void> {
    const w = widen(start, length, this.#minBlockBig, this.#info.size)
    const plan = planReadModifyWrite(length, w, this.#minBlock)
    const range = await this.#ordering.ranges.acquire(w.first, w.end, signal)
    const scope = new RmwScope(() => { this.#ordering.ranges.release(range) })
    try {
      const edges = plan.edges.map((at) => ({ at, block: Buffer.allocUnsafe(this.#minBlock) }))
      await settle(edges.map((e) => this.#readAligned(e.block, w.first + BigInt(e.at), signal)))
      for (const e of edges) patchEdge(e.block, e.at, w.head, length, data)
      const dataFlags = flags & NBD_CMD_FLAG.FUA
      const work = edges.map((e) => this.#writeAligned(e.block, w.first + BigInt(e.at), dataFlags, signal, scope))
      const [from, to] = plan.middle
      if (to > from) {
        const offset = w.first + BigInt(from)
        work.push(data === null
          ? this.#zeroAligned(offset, to - from, flags, signal, scope)
          : this.#writeAligned(data.subarray(from - w.head, to - w.head), offset, dataFlags, signal, scope))
      }
      await settle(work)
    } finally {
      scope.leave()
    }
  }

  async flush (options: RequestOptions = {}): Promise<void> {
    if (!this.canFlush) throw new NotSupportedError('the server does not support FLUSH (it has no write cache to flush)')
    // One connection suffices: with CAN_MULTI_CONN a FLUSH covers writes acked on any of them.
    await this.#ordering.flush(this.#pool.pick(), options.signal)
  }

  /** Discards a range (a hint: contents are undefined until rewritten). Unaligned ends are left alone. */
  async trim (offset: Offset, length: number, options: WriteOptions = {}): Promise<void> {
    const start = toBig(offset)
    checkRange(start, length, this.#info.size)
    this.#checkWritable()
    if (!this.canTrim) throw new NotSupportedError('the server does not support TRIM')
    const first = alignUp(start, this.#minBlockBig)
    const last = alignDown(start + BigInt(length), this.#minBlockBig)
    if (last <= first) return
    const flags = this.#fuaFlag(options.fua)
    await settle(bigPieces(first, last, MAX_EFFECT).map(([at, n]) => this.#sendWrite({ type: NBD_CMD.TRIM, flags, offset: at, length: n }, options.signal, undefined)))
    if (options.fua === true && flags === 0) await this.#emulateFua(options.signal)
  }

  /**
   * Makes a range read back as zeroes (`noHole`: and stay allocated, fallocate's ZERO_RANGE).
   * Falls back to writing zeroes when the server cannot.
   */
  async writeZeroes (offset: Offset, length: number, options: ZeroOptions = {}): Promise<void> {
    const start = toBig(offset)
    checkRange(start, length, this.#info.size)
    this.#checkWritable()
    if (options.fastZero === true && !this.canFastZero) throw new NotSupportedError('the server does not support fast zeroing')
    if (length === 0) return
    let flags = this.#fuaFlag(options.fua)
    if (options.noHole === true) flags |= NBD_CMD_FLAG.NO_HOLE
    if (options.fastZero === true) flags |= NBD_CMD_FLAG.FAST_ZERO
    const w = widen(start, length, this.#minBlockBig, this.#info.size)
    if (w.head === 0 && w.end === start + BigInt(length)) await this.#zeroAligned(start, length, flags, options.signal)
    else await this.#readModifyWrite(start, null, length, flags, options.signal)
    if (options.fua === true && (flags & NBD_CMD_FLAG.FUA) === 0) await this.#emulateFua(options.signal)
  }

  /**
   * fallocate(PUNCH_HOLE): the range reads back as zeroes on every server, and is deallocated
   * where the server can (WRITE_ZEROES without NO_HOLE; written zeroes where it is not
   * offered). Unlike trim(), which is only a hint, this is a promise about the contents.
   */
  punchHole (offset: Offset, length: number, options: WriteOptions = {}): Promise<void> {
    return this.writeZeroes(offset, length, { ...options, noHole: false, fastZero: false })
  }

  #zeroAligned (offset: bigint, length: number, flags: number, signal: AbortSignal | undefined, scope?: RmwScope): Promise<void> {
    if (this.canZero) {
      return settle(bigPieces(offset, offset + BigInt(length), MAX_EFFECT).map(([at, n]) =>
        this.#sendWrite({ type: NBD_CMD.WRITE_ZEROES, flags, offset: at, length: n }, signal, scope)))
    }
    // No WRITE_ZEROES: write zero buffers, one shared buffer for every piece.
    this.#zeroes ??= Buffer.alloc(Math.min(this.#maxPayload, 1024 * 1024))
    const zeroes = this.#zeroes
    return settle(pieces(length, zeroes.length).map(([at, n]) =>
      this.#sendWrite({ type: NBD_CMD.WRITE, flags: flags & NBD_CMD_FLAG.FUA, offset: offset + BigInt(at), length: n, payload: zeroes.subarray(0, n) }, signal, scope)))
  }

  /** Prefetch hint. The range is widened to whole blocks (an unaligned export tail is skipped). */
  async cache (offset: Offset, length: number, options: RequestOptions = {}): Promise<void> {
    const start = toBig(offset)
    checkRange(start, length, this.#info.size)
    if (!this.canCache) throw new NotSupportedError('the server does not support CACHE')
    if (length === 0) return
    const r = statusRange(start, length, this.#minBlockBig, this.#info.size, Number.MAX_SAFE_INTEGER)
    if (r.length === 0) return
    await settle(bigPieces(r.first, r.first + BigInt(r.length), MAX_EFFECT).map(([at, n]) =>
      this.#pool.pick().submit({ type: NBD_CMD.CACHE, flags: 0, offset: at, length: n }, options.signal)))
  }

  /**
   * Allocation (or other meta context) status from `offset`. The server may describe less
   * than `length` but always at least one extent; extents never run past the request. An
   * export tail that is not a whole block cannot be asked about: it is reported as data
   * (allocated, and dirty for a dirty bitmap), which is never wrong.
   */
  blockStatus (offset: Offset, length: number, options?: BlockStatusOptions & { readonly bigint?: false }): Promise<BlockStatus>
  blockStatus (offset: Offset, length: number, options: BlockStatusOptions & { readonly bigint: true }): Promise<BlockStatus<bigint>>
  async blockStatus (offset: Offset, length: number, options: BlockStatusOptions = {}): Promise<BlockStatus<number | bigint>> {
    const status = await this.#blockStatus(toBig(offset), length, options)
    if (options.bigint === true) return status
    return new Map([...status].map(([name, extents]) => [name, extents.map((e) => ({ ...e, offset: toNumber(e.offset) }))]))
  }

  async #blockStatus (start: bigint, length: number, options: BlockStatusOptions): Promise<BlockStatus<bigint>> {
    checkRange(start, length, this.#info.size)
    if (!this.canBlockStatus) throw new NotSupportedError('no meta context was negotiated, so BLOCK_STATUS is unavailable')
    if (length === 0) throw new InvalidArgumentError('blockStatus needs a length above 0')
    const r = statusRange(start, length, this.#minBlockBig, this.#info.size, MAX_EFFECT)
    const result: BlockStatus<bigint> = new Map()
    if (r.length === 0) {
      // Wholly in the unreachable tail.
      const tail = Math.min(length, Number(this.#info.size - start))
      for (const name of this.#info.contexts.values()) {
        result.set(name, [{ offset: start, length: tail, flags: name.startsWith('qemu:dirty-bitmap:') ? NBD_STATE_DIRTY : 0 }])
      }
      return result
    }
    const flags = options.reqOne === true ? NBD_CMD_FLAG.REQ_ONE : 0
    const engine = this.#pool.pick()
    const chunks = await engine.submit({ type: NBD_CMD.BLOCK_STATUS, flags, offset: r.first, length: r.length }, options.signal)
    for (const chunk of chunks ?? []) {
      const name = engine.contexts.get(chunk.contextId)
      if (name === undefined) throw new ProtocolError(`meta context id ${chunk.contextId} is unknown`)
      let at = start
      result.set(name, trimExtents(chunk, r.skip, Math.min(length, r.length - r.skip)).map((e) => {
        const extent = { offset: at, length: e.length, flags: e.flags }
        at += BigInt(e.length)
        return extent
      }))
    }
    return result
  }

  /**
   * Walks the extents of [offset, offset+length) for one meta context, as `nbdinfo --map`
   * does, merging neighbours with the same flags. Covers the whole range, the export's
   * unaligned tail included.
   */
  map (offset?: Offset, length?: number | bigint, options?: MapOptions & { readonly bigint?: false }): AsyncGenerator<Extent>
  map (offset: Offset | undefined, length: number | bigint | undefined, options: MapOptions & { readonly bigint: true }): AsyncGenerator<Extent<bigint>>
  async * map (offset: Offset = 0, length?: number | bigint, options: MapOptions = {}): AsyncGenerator<Extent<number | bigint>> {
    const context = options.context ?? 'base:allocation'
    if (!this.metaContexts.includes(context)) {
      throw new NotSupportedError(`meta context "${context}" was not negotiated (have: ${this.metaContexts.join(', ') || 'none'})`)
    }
    let at = toBig(offset)
    const end = length === undefined ? this.#info.size : at + BigInt(length)
    if (end > this.#info.size) throw new InvalidArgumentError('map range runs past the end of the export')
    const out = (e: Extent<bigint>): Extent<number | bigint> => options.bigint === true ? e : { ...e, offset: toNumber(e.offset) }
    let pending: Extent<bigint> | undefined
    while (at < end) {
      const status = await this.#blockStatus(at, Number(minBig(end - at, BigInt(MAX_EFFECT))), options.signal === undefined ? {} : { signal: options.signal })
      const extents = status.get(context) ?? []
      if (extents.length === 0) throw new ProtocolError(`no extents for ${context} at offset ${at}`)
      for (const e of extents) {
        if (pending !== undefined && pending.flags === e.flags && pending.length + e.length <= Number.MAX_SAFE_INTEGER) {
          pending = { offset: pending.offset, length: pending.length + e.length, flags: e.flags }
        } else {
          if (pending !== undefined) yield out(pending)
          pending = e
        }
        at += BigInt(e.length)
      }
    }
    if (pending !== undefined) yield out(pending)
  }

  // ── connection control ────────────────────────────────────────────────────────────────

  /** Requests waiting for a lost server fail now instead of at the end of the reconnect delay. */
  cancelInFlight (): void { for (const e of this.#pool.engines) e.cancelInFlight() }
  /** Reconnects without failing anything (in-flight requests finish on the old connection). */
  reconnect (): void { for (const e of this.#pool.engines) e.reconnect() }
  /** Disconnects on purpose and stays disconnected until reconnect(). */
  disconnect (): void { for (const e of this.#pool.engines) e.disconnect() }

  /** How long requests wait for a lost server, ms, from their first failure. */
  get reconnectDelay (): number { return this.#pool.engines[0]!.reconnectDelay }

  set reconnectDelay (ms: number) {
    if (!Number.isFinite(ms) || ms < 0) throw new InvalidArgumentError(`reconnectDelay must be a non-negative number of milliseconds, not ${ms}`)
    for (const e of this.#pool.engines) e.reconnectDelay = ms
  }

  /** Per connection (numbered from 1): state, TLS, load, and what it has been through. */
  connectionInfo (): ConnectionInfo[] { return this.#pool.connectionInfo() }

  /** The requests on the wire, over every connection. */
  requestsInFlight (): ReturnType<EnginePool['requests']> { return this.#pool.requests() }

  /** Finishes every request, sends NBD_CMD_DISC and closes. Leaves no timers or sockets. */
  async close (): Promise<void> { await this.#pool.close() }

  /** Fails every request now and closes. */
  destroy (): void { this.#pool.destroy() }

  /** `await using client = await NbdClient.connect(...)` closes it at the end of the scope. */
  async [Symbol.asyncDispose] (): Promise<void> { await this.close() }

  // ── helpers ───────────────────────────────────────────────────────────────────────────

  #fuaFlag (fua: boolean | undefined): number {
    return fua === true && this.canFua ? NBD_CMD_FLAG.FUA : 0
  }

  async #emulateFua (signal: AbortSignal | undefined): Promise<void> {
    // Without SEND_FLUSH the server has no volatile cache: an acked write is already durable.
    if (this.canFlush) await this.flush(signal === undefined ? {} : { signal })
  }

  #checkWritable (): void {
    if (this.isReadOnly) throw new NotSupportedError('the export is read-only')
  }
}

/**
 * The writes of one read-modify-write: its range lock is released once the RMW itself and
 * every write it sent are done on the wire.
 */
class RmwScope {
  #count = 1
  readonly #release: () => void
  constructor (release: () => void) { this.#release = release }
  enter (): void { this.#count++ }
  leave (): void { if (--this.#count === 0) this.#release() }
}

function asBuffer (data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength)
}

function toNumber (offset: bigint): number {
  if (offset > MAX_SAFE) throw new OffsetRangeError(`offset ${offset} is past what a number holds exactly`)
  return Number(offset)
}

/** Waits for every promise, then throws the first failure: the caller's buffers are free once it settles. */
async function settle (work: ReadonlyArray<Promise<unknown>>): Promise<void> {
  if (work.length === 1) {
    await work[0]
    return
  }
  const results = await Promise.allSettled(work)
  for (const r of results) if (r.status === 'rejected') throw r.reason
}
