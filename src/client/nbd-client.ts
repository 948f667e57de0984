/**
 * NbdClient: the public face. It checks every request against what the server advertised
 * (nothing the server did not offer is sent), makes byte-granular requests correct for the
 * server's block size (read-modify-write for unaligned writes, under a range lock), splits
 * large requests at the maximum payload, orders writes around FLUSH, and spreads requests
 * over one engine per connection.
 *
 *   caller ──► NbdClient (checks, align, split, order) ──► Engine × connections ──► server
 */
import { EventEmitter } from 'node:events'
import {
  InvalidArgumentError, NotSupportedError, ProtocolError
} from '../errors.ts'
import { NBD_CMD, NBD_CMD_FLAG, NBD_FLAG, type NbdCmd } from '../protocol/constants.ts'
import type { Extent, StatusChunk } from '../protocol/block-status.ts'
import { establish } from '../connector/connection.ts'
import { listExports, type ListedExport } from '../connector/list-exports.ts'
import type { ExportInfo } from '../connector/export-info.ts'
import { ClientStats, type StatsSnapshot } from '../stats/client-stats.ts'
import { Engine, type NbdClientState, type StateChange } from './engine.ts'
import { resolveOptions, type NbdClientOptions, type ResolvedOptions } from './options.ts'
import { RangeLock } from './range-lock.ts'
import { WriteOrder } from './write-order.ts'
import type { Command } from './request.ts'

export type Offset = number | bigint

export interface RequestOptions {
  readonly signal?: AbortSignal
}

export interface WriteOptions extends RequestOptions {
  /** Force unit access: the reply comes once the data is durable. Emulated with FLUSH when the server lacks FUA. */
  readonly fua?: boolean
}

export interface ZeroOptions extends WriteOptions {
  /** Keep the range allocated (NBD_CMD_FLAG_NO_HOLE). */
  readonly noHole?: boolean
  /** Fail with ENOTSUP unless zeroing is faster than writing zeroes (NBD_CMD_FLAG_FAST_ZERO). */
  readonly fastZero?: boolean
}

export interface BlockStatusOptions extends RequestOptions {
  /** Ask for a single extent per context (NBD_CMD_FLAG_REQ_ONE). */
  readonly reqOne?: boolean
}

/** Extents per meta context name, starting at the requested offset. */
export type BlockStatus = Map<string, Extent[]>

export interface MapExtent {
  readonly offset: bigint
  readonly length: number
  readonly flags: number
}

/** `connections: 'auto'` with a server that allows multi-conn (nbdfuse's and nbdcopy's default too). */
const AUTO_CONNECTIONS = 4

/** With several connections, a connection takes this many requests before the next is used. */
const SPILL = 4

/** Status requests and trims/zeroes are split at this size (a power of two, so always aligned). */
const MAX_EFFECT = 1 << 30

export class NbdClient extends EventEmitter<{ state: [StateChange & { connection: number }] }> {
  readonly #options: ResolvedOptions
  readonly #engines: Engine[]
  readonly #info: ExportInfo
  readonly #order = new WriteOrder()
  readonly #ranges = new RangeLock()
  /** Alignment the server requires (its minimum block size, else 1). */
  readonly #minBlock: number
  readonly #minBlockBig: bigint
  /** Largest READ/WRITE payload we send: a multiple of #minBlock. */
  readonly #maxPayload: number
  #zeroes: Buffer | undefined
  /** The size as a number when it is one exactly (fast range checks); else -1. */
  readonly #sizeNumber: number
  readonly #writable: boolean

  private constructor (options: ResolvedOptions, engines: Engine[]) {
    super()
    this.#options = options
    this.#engines = engines
    this.#info = engines[0]!.info
    this.#minBlock = this.#info.blockSize?.minimum ?? 1
    this.#minBlockBig = BigInt(this.#minBlock)
    const serverMax = this.#info.blockSize?.maximum ?? 0xffffffff
    const max = Math.min(options.maxRequestSize, serverMax)
    this.#maxPayload = Math.max(this.#minBlock, max - (max % this.#minBlock))
    this.#sizeNumber = this.#info.size <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(this.#info.size) : -1
    this.#writable = (this.#info.flags & NBD_FLAG.READ_ONLY) === 0
    engines.forEach((engine, connection) => {
      engine.on('state', (change) => { this.emit('state', { ...change, connection }) })
    })
  }

  /**
   * Connects and negotiates. `target` is an NBD URI or an options bag; `options` adds to it.
   * With `connections` > 1 the first connection must advertise CAN_MULTI_CONN.
   */
  static async connect (target: string | NbdClientOptions, options: NbdClientOptions = {}): Promise<NbdClient> {
    const resolved = resolveOptions(target, options)
    const signal = (typeof target === 'string' ? options.signal : target.signal ?? options.signal)
    const open = (label: string): Promise<Engine> => Engine.open({
      establish: (s) => establish({
        open: resolved.open,
        exportName: resolved.exportName,
        structuredReplies: resolved.structuredReplies,
        extendedHeaders: resolved.extendedHeaders,
        metaContexts: resolved.metaContexts,
        listContexts: resolved.listContexts,
        handshakeTimeout: resolved.handshakeTimeout,
        tls: resolved.tls
      }, s),
      maxInFlight: resolved.maxInFlight,
      requestTimeout: resolved.requestTimeout,
      reconnectDelay: resolved.reconnectDelay,
      openTimeout: resolved.openTimeout,
      label,
      ...(resolved.backoff !== undefined && { backoff: resolved.backoff })
    }, signal)
    const first = await open('connection 1')
    const multiConn = (first.info.flags & NBD_FLAG.CAN_MULTI_CONN) !== 0
    const connections = resolved.connections === 'auto' ? (multiConn ? AUTO_CONNECTIONS : 1) : resolved.connections
    if (connections === 1) return new NbdClient(resolved, [first])
    if (!multiConn) {
      await first.close()
      throw new NotSupportedError(`the server does not advertise CAN_MULTI_CONN, so ${connections} connections would not be safe`)
    }
    const rest = await Promise.allSettled(
      Array.from({ length: connections - 1 }, (_, i) => open(`connection ${i + 2}`)))
    const engines = [first, ...rest.flatMap((r) => r.status === 'fulfilled' ? [r.value] : [])]
    const failed = rest.find((r) => r.status === 'rejected')
    if (failed !== undefined) {
      await Promise.all(engines.map((e) => e.close()))
      throw failed.reason
    }
    return new NbdClient(resolved, engines)
  }

  /**
   * Lists the server's exports (NBD_OPT_LIST), each with what NBD_OPT_INFO says about it,
   * without opening any of them.
   */
  static async list (target: string | NbdClientOptions, options: NbdClientOptions = {}): Promise<ListedExport[]> {
    const resolved = resolveOptions(target, options)
    const signal = typeof target === 'string' ? options.signal : target.signal ?? options.signal
    return await listExports({ open: resolved.open, handshakeTimeout: resolved.handshakeTimeout, tls: resolved.tls, ...(signal !== undefined && { signal }) })
  }

  /** What the server told us about the export (from the first connection). */
  get info (): ExportInfo {
    return this.#info
  }

  get size (): bigint {
    return this.#info.size
  }

  /** The export size, exact at any size. */
  get sizeBigInt (): bigint {
    return this.#info.size
  }

  get exportName (): string {
    return this.#options.exportName
  }

  /** The state of the first connection (QEMU's CONNECTED, CONNECTING_WAIT, ...). */
  get state (): NbdClientState {
    return this.#engines[0]!.state
  }

  get states (): NbdClientState[] {
    return this.#engines.map((e) => e.state)
  }

  get connections (): number {
    return this.#engines.length
  }

  /** Meta contexts selected for blockStatus, by name. */
  get metaContexts (): string[] {
    return [...this.#info.contexts.values()]
  }

  get stats (): StatsSnapshot {
    return ClientStats.sum(this.#engines.map((e) => e.stats.snapshot()))
  }

  get maxInFlight (): number {
    return this.#engines[0]!.maxInFlight
  }

  /** Changes the per-connection request limit at run time. */
  set maxInFlight (n: number) {
    if (!Number.isInteger(n) || n < 1 || n > 4096) throw new InvalidArgumentError(`maxInFlight must be an integer from 1 to 4096, not ${n}`)
    for (const e of this.#engines) e.maxInFlight = n
  }

  /** The largest READ/WRITE sent in one request. */
  get maxPayload (): number {
    return this.#maxPayload
  }

  /** The alignment requests are made to (the server's minimum block size, or 1). */
  get minBlockSize (): number {
    return this.#minBlock
  }

  /** The error of the last failed connect attempt, if any. */
  get lastConnectError (): Error | null {
    return this.#engines.map((e) => e.lastConnectError).find((e) => e !== null) ?? null
  }

  // Capabilities, as libnbd names them (nbd_can_flush, nbd_is_read_only, ...): what the
  // server offers for this export, so callers need not test NBD_FLAG bits themselves.
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
    const buf = Buffer.allocUnsafe(checkLength(length))
    await this.readInto(buf, offset, options)
    return buf
  }

  /** Fills `buffer` from `offset`. Any offset and length inside the export are fine. */
  readInto (buffer: Buffer, offset: Offset, options: RequestOptions = {}): Promise<void> {
    // The common request (aligned, one payload, a number offset) goes straight to an engine:
    // no intermediate promise, one BigInt.
    const length = buffer.length
    if (typeof offset === 'number' && this.#minBlock === 1 && length > 0 && length <= this.#maxPayload &&
        Number.isSafeInteger(offset) && offset >= 0 && offset + length <= this.#sizeNumber) {
      return this.#pick().submit({ type: NBD_CMD.READ, flags: 0, offset: BigInt(offset), length, dest: buffer }, options.signal) as Promise<unknown> as Promise<void>
    }
    return this.#readInto(buffer, offset, options)
  }

  async #readInto (buffer: Buffer, offset: Offset, options: RequestOptions): Promise<void> {
    const start = this.#checkRange(offset, buffer.length)
    if (buffer.length === 0) return
    const { head, end } = this.#widen(start, buffer.length)
    if (head === 0 && end === start + BigInt(buffer.length)) {
      await this.#readAligned(buffer, start, options.signal)
      return
    }
    // Unaligned: read the whole blocks into a bounce buffer and copy out what was asked.
    const bounce = Buffer.allocUnsafe(Number(end - (start - BigInt(head))))
    await this.#readAligned(bounce, start - BigInt(head), options.signal)
    bounce.copy(buffer, 0, head, head + buffer.length)
  }

  #readAligned (dest: Buffer, offset: bigint, signal: AbortSignal | undefined): Promise<void> {
    return this.#pieces(dest.length, this.#maxPayload, (at, n) =>
      this.#submit({ type: NBD_CMD.READ, flags: 0, offset: offset + BigInt(at), length: n, dest: dest.subarray(at, at + n) }, signal))
  }

  // ── writes ────────────────────────────────────────────────────────────────────────────

  /** Writes `buffer` at `offset`. The buffer must not change until the promise settles. */
  write (buffer: Buffer, offset: Offset, options: WriteOptions = {}): Promise<void> {
    const length = buffer.length
    if (typeof offset === 'number' && this.#minBlock === 1 && length > 0 && length <= this.#maxPayload &&
        options.fua !== true && Number.isSafeInteger(offset) && offset >= 0 && offset + length <= this.#sizeNumber &&
        this.#writable) {
      const command = { type: NBD_CMD.WRITE, flags: 0, offset: BigInt(offset), length, payload: buffer }
      const engine = this.#pick()
      return this.#order.run('write', () => engine.submit(command, options.signal) as Promise<unknown> as Promise<void>, options.signal)
    }
    return this.#write(buffer, offset, options)
  }

  async #write (buffer: Buffer, offset: Offset, options: WriteOptions): Promise<void> {
    const start = this.#checkRange(offset, buffer.length)
    this.#checkWritable()
    if (buffer.length === 0) return
    const fua = this.#fuaFlag(options.fua)
    const { head, end } = this.#widen(start, buffer.length)
    const aligned = head === 0 && end === start + BigInt(buffer.length)
    if (aligned) {
      await this.#underRange(start, end, false, options.signal, () =>
        this.#order.run('write', () => this.#writeAligned(buffer, start, fua, options.signal), options.signal))
    } else {
      await this.#underRange(start - BigInt(head), end, true, options.signal, () =>
        this.#readModifyWrite(start, buffer, buffer.length, head, end, fua, options.signal))
    }
    if (options.fua === true && fua === 0) await this.#emulateFua(options.signal)
  }

  #writeAligned (data: Buffer, offset: bigint, flags: number, signal: AbortSignal | undefined): Promise<void> {
    return this.#pieces(data.length, this.#maxPayload, (at, n) =>
      this.#submit({ type: NBD_CMD.WRITE, flags, offset: offset + BigInt(at), length: n, payload: data.subarray(at, at + n) }, signal))
  }

  /**
   * Writes `data` (or zeroes, when null) at `start`, which is not block-aligned. Runs under an
   * exclusive range lock on the whole blocks [start - head, end):
   *
   *   blocks   |  first  |  middle ...  |  last   |
   *   data          [head ...................)tail
   *
   * The partial first and last blocks are read, patched and written back; the whole blocks in
   * between go out as they are (or as WRITE_ZEROES).
   */
  async #readModifyWrite (start: bigint, data: Buffer | null, length: number, head: number, end: bigint, flags: number, signal: AbortSignal | undefined): Promise<void> {
    const min = this.#minBlock
    const blockStart = start - BigInt(head)
    const total = Number(end - blockStart)
    const tail = total - head - length
    const firstPartial = head > 0 || total === min
    const lastPartial = total > min && tail > 0
    const edges: Array<{ at: number, block: Buffer }> = []
    if (firstPartial) edges.push({ at: 0, block: Buffer.allocUnsafe(min) })
    if (lastPartial) edges.push({ at: total - min, block: Buffer.allocUnsafe(min) })
    await settle(edges.map((e) => this.#readAligned(e.block, blockStart + BigInt(e.at), signal)))
    for (const e of edges) {
      const from = Math.max(head, e.at)
      const to = Math.min(head + length, e.at + min)
      if (to <= from) continue
      if (data === null) e.block.fill(0, from - e.at, to - e.at)
      else data.copy(e.block, from - e.at, from - head, to - head)
    }
    const middleStart = firstPartial ? min : 0
    const middleEnd = lastPartial ? total - min : total
    const dataFlags = flags & NBD_CMD_FLAG.FUA
    await this.#order.run('write', () => {
      const work = edges.map((e) => this.#writeAligned(e.block, blockStart + BigInt(e.at), dataFlags, signal))
      if (middleEnd > middleStart) {
        const offset = blockStart + BigInt(middleStart)
        work.push(data === null
          ? this.#zeroAligned(offset, middleEnd - middleStart, flags, signal)
          : this.#writeAligned(data.subarray(middleStart - head, middleEnd - head), offset, dataFlags, signal))
      }
      return settle(work)
    }, signal)
  }

  async flush (options: RequestOptions = {}): Promise<void> {
    if (!this.#can(NBD_FLAG.SEND_FLUSH)) throw new NotSupportedError('the server does not support FLUSH (it has no write cache to flush)')
    // One connection suffices: with CAN_MULTI_CONN a FLUSH covers writes acked on any of them.
    await this.#order.run('flush', () => this.#submit({ type: NBD_CMD.FLUSH, flags: 0, offset: 0n, length: 0 }, options.signal), options.signal)
  }

  /** Discards a range (a hint: contents are undefined until rewritten). Unaligned ends are left alone. */
  async trim (offset: Offset, length: number, options: WriteOptions = {}): Promise<void> {
    const start = this.#checkRange(offset, length)
    this.#checkWritable()
    if (!this.#can(NBD_FLAG.SEND_TRIM)) throw new NotSupportedError('the server does not support TRIM')
    // Only whole blocks can be discarded; shrink to them.
    const first = alignUp(start, this.#minBlockBig)
    const last = alignDown(start + BigInt(length), this.#minBlockBig)
    if (last <= first) return
    const flags = this.#fuaFlag(options.fua)
    await this.#underRange(first, last, false, options.signal, () =>
      this.#order.run('write', () => this.#effect(NBD_CMD.TRIM, flags, first, last, options.signal), options.signal))
    if (options.fua === true && flags === 0) await this.#emulateFua(options.signal)
  }

  /**
   * fallocate(PUNCH_HOLE): the range reads back as zeroes on every server, and is deallocated
   * where the server can (WRITE_ZEROES without NO_HOLE; written zeroes where WRITE_ZEROES is
   * not offered). Unlike trim(), which is only a hint, this is a promise about the contents.
   */
  punchHole (offset: Offset, length: number, options: WriteOptions = {}): Promise<void> {
    return this.writeZeroes(offset, length, { ...options, noHole: false, fastZero: false })
  }

  /** Makes a range read back as zeroes. Falls back to writing zeroes when the server cannot. */
  async writeZeroes (offset: Offset, length: number, options: ZeroOptions = {}): Promise<void> {
    const start = this.#checkRange(offset, length)
    this.#checkWritable()
    if (options.fastZero === true && !this.#can(NBD_FLAG.SEND_FAST_ZERO)) {
      throw new NotSupportedError('the server does not support fast zeroing')
    }
    if (length === 0) return
    let flags = this.#fuaFlag(options.fua)
    if (options.noHole === true) flags |= NBD_CMD_FLAG.NO_HOLE
    if (options.fastZero === true) flags |= NBD_CMD_FLAG.FAST_ZERO
    const { head, end } = this.#widen(start, length)
    if (head === 0 && end === start + BigInt(length)) {
      await this.#underRange(start, end, false, options.signal, () =>
        this.#order.run('write', () => this.#zeroAligned(start, length, flags, options.signal), options.signal))
    } else {
      // The partial blocks are written as data; whole blocks get WRITE_ZEROES with the flags.
      await this.#underRange(start - BigInt(head), end, true, options.signal, () =>
        this.#readModifyWrite(start, null, length, head, end, flags, options.signal))
    }
    if (options.fua === true && (flags & NBD_CMD_FLAG.FUA) === 0) await this.#emulateFua(options.signal)
  }

  #zeroAligned (offset: bigint, length: number, flags: number, signal: AbortSignal | undefined): Promise<void> {
    if (this.#can(NBD_FLAG.SEND_WRITE_ZEROES)) {
      return this.#effect(NBD_CMD.WRITE_ZEROES, flags, offset, offset + BigInt(length), signal)
    }
    // No WRITE_ZEROES: write zero buffers, one shared buffer for every piece.
    this.#zeroes ??= Buffer.alloc(Math.min(this.#maxPayload, 1024 * 1024))
    const zeroes = this.#zeroes
    const writeFlags = flags & NBD_CMD_FLAG.FUA
    return this.#pieces(length, zeroes.length, (at, n) =>
      this.#submit({ type: NBD_CMD.WRITE, flags: writeFlags, offset: offset + BigInt(at), length: n, payload: zeroes.subarray(0, n) }, signal))
  }

  /** Prefetch hint. The range is widened to whole blocks. */
  async cache (offset: Offset, length: number, options: RequestOptions = {}): Promise<void> {
    const start = this.#checkRange(offset, length)
    if (!this.#can(NBD_FLAG.SEND_CACHE)) throw new NotSupportedError('the server does not support CACHE')
    if (length === 0) return
    const first = alignDown(start, this.#minBlockBig)
    const last = minBig(alignUp(start + BigInt(length), this.#minBlockBig), this.#info.size)
    await this.#effect(NBD_CMD.CACHE, 0, first, last, options.signal)
  }

  /**
   * Allocation (or other meta context) status from `offset`. The server may describe less
   * than `length` but always at least one extent; extents never run past the request.
   */
  async blockStatus (offset: Offset, length: number, options: BlockStatusOptions = {}): Promise<BlockStatus> {
    const start = this.#checkRange(offset, length)
    if (this.#info.contexts.size === 0) {
      throw new NotSupportedError('no meta context was negotiated, so BLOCK_STATUS is unavailable')
    }
    if (length === 0) throw new InvalidArgumentError('blockStatus needs a length above 0')
    const first = alignDown(start, this.#minBlockBig)
    const skip = Number(start - first)
    let end = alignUp(start + BigInt(length), this.#minBlockBig)
    if (end > this.#info.size) end = this.#info.size
    const requestLength = Math.min(Number(end - first), MAX_EFFECT)
    const flags = options.reqOne === true ? NBD_CMD_FLAG.REQ_ONE : 0
    const engine = this.#pick()
    const chunks = await engine.submit({ type: NBD_CMD.BLOCK_STATUS, flags, offset: first, length: requestLength }, options.signal)
    const result: BlockStatus = new Map()
    for (const chunk of chunks ?? []) {
      const name = engine.contexts.get(chunk.contextId)
      if (name === undefined) throw new ProtocolError(`meta context id ${chunk.contextId} is unknown`)
      result.set(name, trimExtents(chunk, skip, Math.min(length, requestLength - skip)))
    }
    return result
  }

  /**
   * Walks the extents of [offset, offset+length) for one meta context, as `nbdinfo --map`
   * does, merging neighbours with the same flags.
   */
  async * map (context = 'base:allocation', range: { offset?: Offset, length?: bigint | number, signal?: AbortSignal } = {}): AsyncGenerator<MapExtent> {
    if (!this.metaContexts.includes(context)) {
      throw new NotSupportedError(`meta context "${context}" was not negotiated (have: ${this.metaContexts.join(', ') || 'none'})`)
    }
    let at = toBig(range.offset ?? 0n)
    const end = range.length === undefined ? this.#info.size : at + BigInt(range.length)
    if (end > this.#info.size) throw new InvalidArgumentError('map range runs past the end of the export')
    let pending: MapExtent | undefined
    while (at < end) {
      const length = Number(minBig(end - at, BigInt(MAX_EFFECT)))
      const status = await this.blockStatus(at, length, range.signal === undefined ? {} : { signal: range.signal })
      const extents = status.get(context) ?? []
      if (extents.length === 0) throw new ProtocolError(`no extents for ${context} at offset ${at}`)
      for (const e of extents) {
        if (pending !== undefined && pending.flags === e.flags && pending.length + e.length <= Number.MAX_SAFE_INTEGER) {
          pending = { offset: pending.offset, length: pending.length + e.length, flags: e.flags }
        } else {
          if (pending !== undefined) yield pending
          pending = { offset: at, length: e.length, flags: e.flags }
        }
        at += BigInt(e.length)
      }
    }
    if (pending !== undefined) yield pending
  }

  // ── connection control ────────────────────────────────────────────────────────────────

  /** Requests waiting for a lost server fail now instead of at the end of the reconnect delay. */
  cancelInFlight (): void {
    for (const e of this.#engines) e.cancelInFlight()
  }

  /** Reconnects without failing anything (in-flight requests finish on the old connection). */
  reconnect (): void {
    for (const e of this.#engines) e.reconnect()
  }

  /** Disconnects on purpose and stays disconnected until reconnect(). */
  disconnect (): void {
    for (const e of this.#engines) e.disconnect()
  }

  /** How long requests wait for a lost server, ms. */
  get reconnectDelay (): number {
    return this.#engines[0]!.reconnectDelay
  }

  set reconnectDelay (ms: number) {
    if (!Number.isFinite(ms) || ms < 0) throw new InvalidArgumentError(`reconnectDelay must be a non-negative number of milliseconds, not ${ms}`)
    for (const e of this.#engines) e.reconnectDelay = ms
  }

  /** Per connection: state, load, and what it has been through. */
  connectionInfo (): Array<{ connection: number, state: NbdClientState, inFlight: number, queued: number, lastError: string | undefined, stats: StatsSnapshot }> {
    return this.#engines.map((e, connection) => ({
      connection: connection + 1,
      state: e.state,
      inFlight: e.inFlight,
      queued: e.queued,
      lastError: e.lastConnectError?.message,
      stats: e.stats.snapshot()
    }))
  }

  /** The requests on the wire, over every connection. */
  requestsInFlight (): Array<{ connection: number, cookie: number, type: string, offset: bigint, length: number, ageMs: number, attempts: number }> {
    return this.#engines.flatMap((e, i) => e.requests().map((r) => ({ connection: i + 1, ...r })))
  }

  /** Finishes every request, sends NBD_CMD_DISC and closes. Leaves no timers or sockets. */
  async close (): Promise<void> {
    await Promise.all(this.#engines.map((e) => e.close()))
  }

  /** Fails every request now and closes. */
  destroy (): void {
    for (const e of this.#engines) e.destroy()
  }

  // ── helpers ───────────────────────────────────────────────────────────────────────────

  /** The least busy connection. */
  /**
   * The connection for the next request: the first one (in order) with fewer than SPILL
   * requests, else the least loaded. Light traffic stays on one socket, where one wake-up
   * often brings several replies; heavy traffic spreads over all of them.
   */
  #pick (): Engine {
    const engines = this.#engines
    if (engines.length === 1) return engines[0]!
    let best: Engine | undefined
    for (const e of engines) {
      if (e.state !== 'CONNECTED') continue
      const load = e.inFlight + e.queued
      if (load < SPILL) return e
      if (best === undefined || load < best.inFlight + best.queued) best = e
    }
    return best ?? engines[0]!
  }

  #submit (command: Command, signal: AbortSignal | undefined): Promise<void> {
    return this.#pick().submit(command, signal) as Promise<unknown> as Promise<void>
  }

  /** Splits [0, total) into pieces of at most `size` and settles them all. */
  #pieces (total: number, size: number, run: (at: number, n: number) => Promise<void>): Promise<void> {
    if (total <= size) return run(0, total)
    const work: Array<Promise<void>> = []
    for (let at = 0; at < total; at += size) work.push(run(at, Math.min(size, total - at)))
    return settle(work)
  }

  /** Payload-less commands over [first, last), split at MAX_EFFECT. */
  #effect (type: NbdCmd, flags: number, first: bigint, last: bigint, signal: AbortSignal | undefined): Promise<void> {
    const total = last - first
    if (total <= BigInt(MAX_EFFECT)) return this.#submit({ type, flags, offset: first, length: Number(total) }, signal)
    const work: Array<Promise<void>> = []
    for (let at = first; at < last; at += BigInt(MAX_EFFECT)) {
      work.push(this.#submit({ type, flags, offset: at, length: Number(minBig(BigInt(MAX_EFFECT), last - at)) }, signal))
    }
    return settle(work)
  }

  async #underRange<T> (start: bigint, end: bigint, exclusive: boolean, signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
    // With no alignment to fix, nothing is ever read back, so there is nothing to lock.
    if (this.#minBlock === 1) return await fn()
    const release = await this.#ranges.acquire(start, end, exclusive, signal)
    try {
      return await fn()
    } finally {
      release()
    }
  }

  #fuaFlag (fua: boolean | undefined): number {
    return fua === true && this.#can(NBD_FLAG.SEND_FUA) ? NBD_CMD_FLAG.FUA : 0
  }

  async #emulateFua (signal: AbortSignal | undefined): Promise<void> {
    // Without SEND_FLUSH the server has no volatile cache: an acked write is already durable.
    if (this.#can(NBD_FLAG.SEND_FLUSH)) await this.flush(signal === undefined ? {} : { signal })
  }

  #checkWritable (): void {
    if (this.#can(NBD_FLAG.READ_ONLY)) throw new NotSupportedError('the export is read-only')
  }

  #checkRange (offset: Offset, length: number): bigint {
    const start = toBig(offset)
    checkLength(length)
    if (start + BigInt(length) > this.#info.size) {
      throw new InvalidArgumentError(`range ${start}+${length} runs past the end of the export (${this.#info.size} bytes)`)
    }
    return start
  }

  /** Widens [start, start+length) to whole blocks: `head` bytes before, up to `end`. */
  #widen (start: bigint, length: number): { head: number, end: bigint } {
    if (this.#minBlock === 1) return { head: 0, end: start + BigInt(length) }
    const head = Number(start % this.#minBlockBig)
    const end = alignUp(start + BigInt(length), this.#minBlockBig)
    if (end > this.#info.size) {
      throw new InvalidArgumentError(`the export's last ${this.#info.size % this.#minBlockBig} bytes are not a whole block of ${this.#minBlock} and cannot be reached`)
    }
    return { head, end }
  }
}

function toBig (offset: Offset): bigint {
  if (typeof offset === 'bigint') {
    if (offset < 0n) throw new InvalidArgumentError(`offset ${offset} is negative`)
    return offset
  }
  if (!Number.isSafeInteger(offset) || offset < 0) throw new InvalidArgumentError(`offset ${offset} is not a non-negative integer`)
  return BigInt(offset)
}

function checkLength (length: number): number {
  if (!Number.isSafeInteger(length) || length < 0) throw new InvalidArgumentError(`length ${length} is not a non-negative integer`)
  return length
}

const alignDown = (x: bigint, a: bigint): bigint => x - (x % a)
const alignUp = (x: bigint, a: bigint): bigint => alignDown(x + a - 1n, a)
const minBig = (a: bigint, b: bigint): bigint => (a < b ? a : b)

/** Waits for every promise, then throws the first failure: the caller's buffers are free once it settles. */
async function settle (work: ReadonlyArray<Promise<unknown>>): Promise<void> {
  const results = await Promise.allSettled(work)
  for (const r of results) if (r.status === 'rejected') throw r.reason
}

/** Drops the first `skip` bytes of a status chunk and keeps at most `length` bytes. */
function trimExtents (chunk: StatusChunk, skip: number, length: number): Extent[] {
  const out: Extent[] = []
  let at = 0
  for (const e of chunk.extents) {
    const from = Math.max(at, skip)
    const to = Math.min(at + e.length, skip + length)
    if (to > from) out.push({ length: to - from, flags: e.flags })
    at += e.length
    if (at >= skip + length) break
  }
  return out
}
