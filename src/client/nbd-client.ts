/**
 * NbdClient: the public face. It checks every request against what the server advertised
 * (nothing the server did not offer is sent), makes byte-granular requests correct for the
 * server's block size (read-modify-write for unaligned writes), splits large requests at the
 * maximum payload, orders writes (Ordering), and spreads requests over the connections.
 *
 *   caller ──► NbdClient (checks, shaping) ──► Ordering (writes) ──► EnginePool ──► Engine × N
 *
 * The conventions of the whole surface (docs/library.md, "Conventions"):
 *   - argument order: data or length first, the offset (position) last, options last of all,
 *     as Node's FileHandle (`read(buffer, offset, length, position)`) and libnbd
 *     (`pread(buf, offset)`, `trim(count, offset)`): `read(length, offset)`,
 *     `write(buffer, offset)`, `trim(length, offset)`, `blockStatus(length, offset)`, ...
 *   - numbers: offsets, lengths and sizes are numbers, exact up to 2^53 bytes (8 PiB). An
 *     offset may also be a bigint (as FileHandle's position may), so the whole u64 range is
 *     reachable; a number the client would hand back past 2^53 is never rounded: the getter
 *     or call throws an OffsetRangeError (NBD_ERR_RANGE) that names the exact form
 *     (`sizeBigInt`, `{ bigint: true }`, as fs.stat has).
 *   - getters for cheap state (`size`, `state`, `canTrim`), methods for snapshots built on
 *     each call (`stats()`, `states()`, `connectionInfo()`, `paths()`, `requestsInFlight()`).
 */
import { EventEmitter } from 'node:events'
import type { Readable, Writable } from 'node:stream'
import { ClosedError, InvalidArgumentError, NotSupportedError, OffsetRangeError } from '../errors.ts'
import { NBD_CMD, NBD_FLAG } from '../protocol/constants.ts'
import { listExports } from '../connector/list-exports.ts'
import { exportInfo, listedExport, type ExportInfo, type ListedExport } from './export-info.ts'
import type { StatsSnapshot } from '../stats/client-stats.ts'
import { flushStateChanges, type NbdClientState } from './engine/lifecycle.ts'
import { Geometry, settle, toNumber } from './geometry.ts'
import { resolveOptions, type NbdClientOptions, type ResolvedOptions } from './options.ts'
import { Ordering } from './ordering.ts'
import { EnginePool, type ConnectionInfo } from './pool.ts'
import { checkRange, pieces, toBig, toLength, widen, type Offset } from './shaping.ts'
import { blockStatus, cache, walk, type BlockStatus, type Extent } from './status.ts'
import { Writes } from './writes.ts'
import { createReadStream, createWriteStream, type ReadStreamOptions, type WriteStreamOptions } from '../streams/index.ts'
import type { Multipath } from '../multipath/open-paths.ts'
import type { Failback, PathChange, PathStatus } from '../multipath/index.ts'

export type { BlockStatus, Extent, Offset }

/** How long requests wait for a replay with neither a reconnect delay nor liveness (ms). */
const DEFAULT_REPLAY_BOUND = 60_000

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

/** A state change of one connection of the client: the `'state'` event. */
export interface StateChange {
  readonly from: NbdClientState
  readonly to: NbdClientState
  /** Why, in words ("connection lost: server closed the connection", "disconnect requested"). */
  readonly reason: string
  /** The connection, numbered from 1 ... */
  readonly connection: number
  /** ... of this many. */
  readonly connections: number
}

/** A request on the wire: what `requestsInFlight()` lists. */
export interface RequestInfo<O extends number | bigint = number> {
  /** The connection it is on, numbered from 1. */
  readonly connection: number
  /** Its cookie on that connection (the NBD handle). */
  readonly cookie: number
  /** The command: `'READ'`, `'WRITE'`, `'FLUSH'`, ... */
  readonly type: string
  readonly offset: O
  readonly length: number
  /** Since its (last) send, ms. */
  readonly ageMs: number
  /** Sends after a lost connection. */
  readonly attempts: number
}

/** Options of `requestsInFlight()`. */
export interface RequestsInFlightOptions {
  /** Offsets as bigints (exact past 2^53). */
  readonly bigint?: boolean
}


export class NbdClient extends EventEmitter<{ state: [StateChange], path: [PathChange] }> {
  readonly #options: ResolvedOptions
  readonly #pool: EnginePool
  readonly #g: Geometry
  readonly #writes: Writes
  readonly #info: ExportInfo
  readonly #metaContexts: readonly string[]

  private constructor (options: ResolvedOptions, pool: EnginePool, ordering: Ordering) {
    super()
    this.#options = options
    this.#pool = pool
    ordering.flushEngines = () => pool.flushEngines()
    ordering.engines = () => pool.engines
    ordering.watch = pool.multipath?.watchWrite
    this.#g = new Geometry(pool.engines[0]!.info, pool, ordering, options.maxRequestSize)
    this.#info = exportInfo(this.#g.info)
    this.#metaContexts = Object.freeze([...this.#g.info.contexts.values()])
    this.#writes = new Writes(this.#g, (signal) => this.flush(signal === undefined ? {} : { signal }))
    pool.multipath?.paths.on('change', (change) => { this.emit('path', change) })
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
    // The ledger is made once the first connection says whether the server has a write cache;
    // nothing is written before that.
    const pool = await EnginePool.open(resolved, {
      gate: (req) => ordering?.gate(req),
      lost: (unflushed) => { ordering?.hooks.lost?.(unflushed) }
    }, signal)
    const info = pool.engines[0]!.info
    const engine = pool.engines[0]!
    ordering = new Ordering({
      logBytes: resolved.replayLog,
      volatileCache: (info.flags & NBD_FLAG.SEND_FLUSH) !== 0 && (info.flags & NBD_FLAG.READ_ONLY) === 0,
      bound: () => engine.reconnectDelay > 0 ? engine.reconnectDelay : resolved.requestTimeout > 0 ? resolved.requestTimeout : DEFAULT_REPLAY_BOUND
    })
    return new NbdClient(resolved, pool, ordering)
  }

  /** Lists the server's exports (NBD_OPT_LIST), each with what NBD_OPT_INFO says about it. */
  static async list (target: string | NbdClientOptions, options: NbdClientOptions = {}): Promise<ListedExport[]> {
    const resolved = resolveOptions(target, options)
    const signal = typeof target === 'string' ? options.signal : target.signal ?? options.signal
    const listed = await listExports({ open: resolved.open, handshakeTimeout: resolved.handshakeTimeout, tls: resolved.tls, ...(signal !== undefined && { signal }) })
    return listed.map(listedExport)
  }

  /** What the server told us about the export (from the first connection). */
  get info (): ExportInfo { return this.#info }

  /** The export size in bytes; past 2^53 it throws an OffsetRangeError (NBD_ERR_RANGE): use sizeBigInt there. */
  get size (): number {
    if (this.#g.sizeNumber < 0) throw new OffsetRangeError(`the export is ${this.#g.info.size} bytes, more than a number holds exactly: use sizeBigInt`)
    return this.#g.sizeNumber
  }

  /** The export size in bytes, exact at any size. */
  get sizeBigInt (): bigint { return this.#g.info.size }
  get exportName (): string { return this.#options.exportName }
  /** The state of the first connection (QEMU's CONNECTED, CONNECTING_WAIT, ...). */
  get state (): NbdClientState { return this.#pool.engines[0]!.state }
  /** Every connection's state, connection 1 first (a snapshot). */
  states (): NbdClientState[] { return this.#pool.states }
  get connections (): number { return this.#pool.engines.length }
  /** Meta contexts selected for blockStatus, by name (fixed at connect). */
  get metaContexts (): readonly string[] { return this.#metaContexts }
  /** Counters summed over the connections (a snapshot). */
  stats (): StatsSnapshot { return this.#pool.stats() }
  get maxInFlight (): number { return this.#pool.engines[0]!.maxInFlight }

  /** Changes the per-connection request limit at run time. */
  set maxInFlight (n: number) {
    if (!Number.isInteger(n) || n < 1 || n > 4096) throw new InvalidArgumentError(`maxInFlight must be an integer from 1 to 4096, not ${n}`)
    for (const e of this.#pool.engines) e.maxInFlight = n
  }

  /** The largest READ/WRITE sent in one request. */
  get maxPayload (): number { return this.#g.maxPayload }
  /** The alignment requests are made to (the server's minimum block size, or 1). */
  get minBlockSize (): number { return this.#g.minBlock }

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
  get canBlockStatus (): boolean { return this.#g.info.contexts.size > 0 }
  get isReadOnly (): boolean { return this.#can(NBD_FLAG.READ_ONLY) }
  get isRotational (): boolean { return this.#can(NBD_FLAG.ROTATIONAL) }

  #can (flag: number): boolean {
    return this.#g.can(flag)
  }

  // ── reads ─────────────────────────────────────────────────────────────────────────────

  /**
   * Reads `length` bytes from `offset` into a new Buffer. Length first, the offset last (as
   * FileHandle and libnbd's pread); the offset may be a bigint past 2^53.
   */
  async read (length: number, offset: Offset, options: RequestOptions = {}): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(toLength(length))
    await this.readInto(buf, offset, options)
    return buf
  }

  /** Fills `buffer` from `offset`. Any offset and length inside the export are fine. */
  readInto (buffer: Uint8Array, offset: Offset, options: RequestOptions = {}): Promise<void> {
    const g = this.#g
    const dest = asBuffer(buffer)
    const length = dest.length
    // The common request (aligned, one payload, a number offset) goes straight to an engine.
    if (typeof offset === 'number' && g.minBlock === 1 && length > 0 && length <= g.maxPayload &&
        Number.isSafeInteger(offset) && offset >= 0 && offset + length <= g.sizeNumber) {
      return this.#pool.pick().submit({ type: NBD_CMD.READ, flags: 0, offset: BigInt(offset), length, dest }, options.signal) as Promise<unknown> as Promise<void>
    }
    return this.#readInto(dest, offset, options.signal)
  }

  async #readInto (dest: Buffer, offset: Offset, signal: AbortSignal | undefined): Promise<void> {
    const g = this.#g
    const start = toBig(offset)
    checkRange(start, dest.length, g.info.size)
    if (dest.length === 0) return
    const w = widen(start, dest.length, g.minBlockBig, g.info.size)
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
    return settle(pieces(dest.length, this.#g.maxPayload).map(([at, n]) =>
      this.#pool.pick().submit({ type: NBD_CMD.READ, flags: 0, offset: offset + BigInt(at), length: n, dest: dest.subarray(at, at + n) }, signal)))
  }

  // ── writes ────────────────────────────────────────────────────────────────────────────

  /** Writes `buffer` at `offset`. The buffer must not change until the promise settles. */
  write (buffer: Uint8Array, offset: Offset, options: WriteOptions = {}): Promise<void> {
    const g = this.#g
    const length = buffer.length
    if (typeof offset === 'number' && g.minBlock === 1 && length > 0 && length <= g.maxPayload &&
        options.fua !== true && Number.isSafeInteger(offset) && offset >= 0 && offset + length <= g.sizeNumber && !this.isReadOnly) {
      return g.ordering.write(this.#pool.pick(), { type: NBD_CMD.WRITE, flags: 0, offset: BigInt(offset), length, payload: buffer }, options.signal)
    }
    return this.#writes.write(buffer, toBig(offset), options)
  }

  /** FLUSH: every write acknowledged before it is durable once it succeeds (a barrier). */
  async flush (options: RequestOptions = {}): Promise<void> {
    if (!this.canFlush) throw new NotSupportedError('the server does not support FLUSH (it has no write cache to flush)')
    // One connection suffices: with CAN_MULTI_CONN a FLUSH covers writes acked on any of them.
    await this.#g.ordering.flush(this.#pool.flushEngines(), options.signal)
  }

  /** Discards `length` bytes from `offset` (a hint: contents are undefined until rewritten). Unaligned ends are left alone. */
  async trim (length: number, offset: Offset, options: WriteOptions = {}): Promise<void> {
    await this.#writes.trim(toBig(offset), toLength(length), options)
  }

  /**
   * Makes `length` bytes from `offset` read back as zeroes (`noHole`: and stay allocated,
   * fallocate's ZERO_RANGE). Falls back to writing zeroes when the server cannot.
   */
  async writeZeroes (length: number, offset: Offset, options: ZeroOptions = {}): Promise<void> {
    await this.#writes.writeZeroes(toBig(offset), toLength(length), options)
  }

  /**
   * fallocate(PUNCH_HOLE) of `length` bytes from `offset`: the range reads back as zeroes on every server, and is deallocated
   * where the server can (WRITE_ZEROES without NO_HOLE; written zeroes where it is not
   * offered). Unlike trim(), which is only a hint, this is a promise about the contents.
   */
  async punchHole (length: number, offset: Offset, options: WriteOptions = {}): Promise<void> {
    await this.#writes.writeZeroes(toBig(offset), toLength(length), { ...options, noHole: false, fastZero: false })
  }

  /** Prefetch hint for `length` bytes from `offset`, widened to whole blocks (an unaligned export tail is skipped). */
  async cache (length: number, offset: Offset, options: RequestOptions = {}): Promise<void> {
    await cache(this.#g, toBig(offset), toLength(length), options.signal)
  }

  /**
   * Allocation (or other meta context) status of `length` bytes from `offset`. The server may
   * describe less than `length` but always at least one extent; extents never run past the
   * request. An export tail that is not a whole block is reported as data (see status.ts).
   * Test `flags` with NBD_STATE_HOLE / NBD_STATE_ZERO (base:allocation), NBD_STATE_DIRTY.
   * `{ bigint: true }`: offsets as bigints (exact past 2^53); else numbers, and an
   * OffsetRangeError past 2^53.
   */
  blockStatus (length: number, offset: Offset, options?: BlockStatusOptions & { readonly bigint?: false }): Promise<BlockStatus>
  blockStatus (length: number, offset: Offset, options: BlockStatusOptions & { readonly bigint: true }): Promise<BlockStatus<bigint>>
  async blockStatus (length: number, offset: Offset, options: BlockStatusOptions = {}): Promise<BlockStatus<number | bigint>> {
    const status = await blockStatus(this.#g, toBig(offset), toLength(length), options.reqOne === true, options.signal)
    if (options.bigint === true) return status
    return new Map([...status].map(([name, extents]) => [name, extents.map((e) => ({ ...e, offset: toNumber(e.offset) }))]))
  }

  /**
   * Walks the extents of [offset, offset+length) for one meta context, as `nbdinfo --map`
   * does, merging neighbours with the same flags. Covers the whole range, the export's
   * unaligned tail included. `length` defaults to the rest of the export, `offset` to 0:
   * `map()` walks it all.
   */
  map (length?: number, offset?: Offset, options?: MapOptions & { readonly bigint?: false }): AsyncGenerator<Extent>
  map (length: number | undefined, offset: Offset | undefined, options: MapOptions & { readonly bigint: true }): AsyncGenerator<Extent<bigint>>
  async * map (length?: number, offset: Offset = 0, options: MapOptions = {}): AsyncGenerator<Extent<number | bigint>> {
    const start = toBig(offset)
    const end = length === undefined ? this.#g.info.size : start + BigInt(toLength(length))
    for await (const e of walk(this.#g, start, end, options.context ?? 'base:allocation', options.signal)) {
      yield options.bigint === true ? e : { ...e, offset: toNumber(e.offset) }
    }
  }

  /**
   * The export (or [start, end], inclusive as fs.createReadStream's) as a Readable, with
   * backpressure; `sparse: true` yields data and zero runs as objects (see streams/).
   */
  createReadStream (options: ReadStreamOptions = {}): Readable { return createReadStream(this, options) }

  /** A Writable that writes from `start` on, with requests in flight and a FLUSH at the end. */
  createWriteStream (options: WriteStreamOptions = {}): Writable { return createWriteStream(this, options) }

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

  // ── paths (multipath: NbdClient.connect({ uri, paths: [...] })) ─────────────────────────

  /** Each path's state (ready, failed, disabled), whether it is active, what the checker said; [] with one path. */
  paths (): PathStatus[] { return this.#pool.multipath?.paths.status() ?? [] }

  /** `fail path N` (1-based): not used until reinstatePath(N); the active path moves away now. */
  failPath (path: number): void { this.#multipath().paths.disable(path) }

  /** `reinstate path N`: checked at once, and used again once ready. */
  reinstatePath (path: number): void {
    const m = this.#multipath()
    m.paths.reinstate(path)
    void m.checker.check(path - 1)
  }

  /** The failback policy (settable at run time): 'immediate', 'manual', or a delay in ms. */
  get failback (): Failback { return this.#multipath().paths.failback }
  set failback (policy: Failback) { this.#multipath().paths.failback = policy }

  /** `switch path N`: make a ready path the active one (failover): connections move there softly. */
  switchPath (path: number): void { this.#multipath().paths.switchTo(path) }

  #multipath (): Multipath {
    const m = this.#pool.multipath
    if (m === undefined) throw new NotSupportedError('this client has one path (give paths: [...] to connect over several)')
    return m
  }

  /** Per connection (numbered from 1): state, TLS, load, and what it has been through. */
  connectionInfo (): ConnectionInfo[] { return this.#pool.connectionInfo() }

  /** The requests on the wire, over every connection (a snapshot); `{ bigint: true }`: offsets as bigints. */
  requestsInFlight (options?: RequestsInFlightOptions & { readonly bigint?: false }): Array<RequestInfo>
  requestsInFlight (options: RequestsInFlightOptions & { readonly bigint: true }): Array<RequestInfo<bigint>>
  requestsInFlight (options: RequestsInFlightOptions = {}): Array<RequestInfo<number | bigint>> {
    const requests = this.#pool.requests()
    return options.bigint === true ? requests : requests.map((r) => ({ ...r, offset: toNumber(r.offset) }))
  }

  /**
   * Finishes every request, sends NBD_CMD_DISC and closes. Leaves no timers or sockets; every
   * `'state'` event of the close has been emitted when it resolves.
   */
  async close (): Promise<void> {
    // Requests still waiting for a replay are not sent any more; those on the wire finish.
    this.#g.ordering.close()
    try {
      await this.#pool.close()
    } finally {
      flushStateChanges()
    }
  }

  /** Fails every request now and closes (its `'state'` events are emitted before it returns). */
  destroy (): void {
    this.#g.ordering.close(new ClosedError('client destroyed'))
    this.#pool.destroy()
    flushStateChanges()
  }

  /** `await using client = await NbdClient.connect(...)` closes it at the end of the scope. */
  async [Symbol.asyncDispose] (): Promise<void> { await this.close() }

}

function asBuffer (data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength)
}
