/**
 * Everything that orders write-like requests against each other and keeps what they
 * acknowledged, for every connection of a client:
 *
 *   write ──► range lock (overlapping writes go in submission order)
 *         ──► write order (the FLUSH barrier) ──► engine
 *         ──► at each send: wait while a replay runs; then the replay log forgets the range
 *         ──► life on the wire over: a copy recorded if it succeeded; order left, range released
 *         ──► the caller is answered
 *
 *   flush ──► write order (after every earlier write's life on the wire) ──► engine
 *         ──► the log's records up to it are durable: dropped
 *
 *   a connection after the first ──► recover(): sends pause on every connection, the log's
 *         pieces are written again on the new one, sends go on; once per loss (connections
 *         lost before a replay that has run, or is running, do not replay again)
 *
 * The range lock and the write order are released by the request's life on the wire (the
 * engine's `settled` hook), never by the caller's promise, so an aborted or timed-out write
 * still holds back a later overlapping write and the next FLUSH until the server is done with
 * it. The log forgets a range only when a newer write to it is actually sent, so a write that
 * never went out (aborted while it waited) leaves the older acknowledged content protected;
 * and since every piece in the log is then disjoint from every write on the wire, a replay
 * needs no range locks: pausing new sends while it runs is enough to keep it behind nothing
 * and ahead of everything newer.
 */
import { NBD_CMD, NBD_CMD_FLAG } from '../protocol/constants.ts'
import { DurabilityError } from '../errors.ts'
import type { Command } from './engine/request.ts'
import type { Engine, RecoveryChannel } from './engine/engine.ts'
import { deferred, type Deferred } from '../util/deferred.ts'
import { settle } from './geometry.ts'
import { RangeLock, type HeldRange } from './range-lock.ts'
import { ReplayLog, type Piece, type PieceKind } from './replay-log.ts'
import { WriteOrder } from './write-order.ts'

/** Replay writes in flight at once on a recovering connection. */
const REPLAY_DEPTH = 8

export class Ordering {
  readonly #ranges = new RangeLock()
  readonly #order = new WriteOrder()
  readonly #log: ReplayLog
  /** The server has a volatile cache: acknowledged writes are kept until a FLUSH covers them. */
  readonly #logging: boolean
  #backgroundFlush: Promise<void> | null = null
  /** Where background FLUSHes go: one connection per server whose cache may hold writes. */
  #flushEngines: (() => Engine[]) | null = null
  /** Every engine of the client: their connections that are closing may owe a FLUSH. */
  #engines: () => readonly Engine[] = () => []
  /** Told of each write-like command before it is submitted, and of its outcome (multipath's identity bytes). */
  watch: ((command: Command) => ((ok: boolean) => void) | undefined) | undefined
  /** A replay finished at this time (performance.now()); one in progress, and when it began. */
  #replayedAt = -1
  #replaying: { readonly startedAt: number, readonly done: Promise<void> } | null = null
  /** Closed while a replay runs: sends of writes and flushes wait for it. */
  #gate: Deferred<void> | null = null
  readonly #atGate = (): Promise<void> | undefined => this.#gate?.promise
  /** Acknowledged writes may be gone and could not be written again: the next FLUSH says so. */
  #lost = false
  /** A background FLUSH found writes of a closing connection uncovered: the next barrier rewrites the log. */
  #owed = false
  /** A FLUSH that finished while a replay ran: applied after it (the replay reads the ring). */
  #flushedDuringReplay = -1

  constructor (options: { readonly logBytes: number, readonly volatileCache: boolean }) {
    this.#logging = options.volatileCache
    this.#log = new ReplayLog(options.volatileCache ? options.logBytes : 0)
  }

  /** Where background FLUSHes go (as a barrier FLUSH would: every path in multipath). */
  set flushEngines (pick: () => Engine[]) {
    this.#flushEngines = pick
  }

  set engines (all: () => readonly Engine[]) {
    this.#engines = all
  }

  /**
   * A FLUSH vouches for a write acknowledged by a connection that was already closing only
   * once that connection's own FLUSH succeeded (the write may have come after the next
   * connection's replay, and another server's FLUSH covers nothing of it). False: one did not.
   */
  async #drainsDurable (): Promise<boolean> {
    const owed = this.#engines().map((engine) => engine.drainsDurable())
    return (await Promise.all(owed)).every(Boolean)
  }

  get ranges (): RangeLock {
    return this.#ranges
  }

  /**
   * Sends a write-like command through `engine`, in order. `held`: the caller already holds a
   * range covering it (a read-modify-write holds the widened range across read and
   * write-back) and hears through `done` when this write's life on the wire is over.
   */
  async write (engine: Engine, command: Command, signal: AbortSignal | undefined, held?: { readonly range: HeldRange, readonly done: () => void }): Promise<void> {
    const end = command.offset + BigInt(command.length)
    let range: HeldRange | undefined
    if (held === undefined) range = this.#ranges.tryAcquire(command.offset, end) ?? await this.#ranges.acquire(command.offset, end, signal)
    try {
      const entering = this.#order.enter('write', signal)
      if (entering !== undefined) await entering
    } catch (err) {
      if (range !== undefined) this.#ranges.release(range)
      held?.done()
      throw err
    }
    let pinned = false
    const watched = this.watch?.(command)
    await engine.submit(command, signal, {
      beforeSend: () => {
        if (this.#gate !== null) return this.#gate.promise
        this.#log.supersede(command.offset, end)
        return undefined
      },
      inDoubt: () => {
        pinned = true
        this.#order.pin()
        this.#ranges.pin(range ?? held!.range)
      },
      settled: (ok) => {
        watched?.(ok)
        return this.#settled(command, ok, range, held?.done, pinned)
      }
    })
  }

  /** A write's life on the wire is over: record it (a copy) if it succeeded, then let others go. */
  #settled (command: Command, ok: boolean, range: HeldRange | undefined, done: (() => void) | undefined, pinned: boolean): void | Promise<void> {
    const release = (): void => {
      if (!pinned) this.#order.leave('write')
      if (range !== undefined) this.#ranges.release(range)
      done?.()
    }
    if (!ok || !this.#logging || (command.flags & NBD_CMD_FLAG.FUA) !== 0) {
      release()
      return
    }
    if (this.#log.limit > 0 && command.length > this.#log.limit / 4) {
      // Too big to keep a copy of: made durable before its caller hears (a FLUSH sent after it).
      return this.#flushEarly(true).catch(() => { this.#log.lose() }).finally(release)
    }
    if (this.#log.record(command.offset, kindOf(command), command.length, command.payload)) {
      release()
      if (this.#log.wantsFlush) this.#flushEarly(false).catch(() => {})
      return
    }
    // The ring is full: the caller's answer waits until a FLUSH frees room (payload still valid).
    return this.#recordLater(command).finally(release)
  }

  async #recordLater (command: Command): Promise<void> {
    for (let tries = 0; tries < 3; tries++) {
      await this.#flushEarly(tries > 0).catch(() => {})
      if (this.#log.record(command.offset, kindOf(command), command.length, command.payload)) return
    }
    this.#log.lose()
  }

  /**
   * A FLUSH in the background (not a barrier: it covers what was acknowledged before it was
   * sent, and writes go on meanwhile). Joins the one on its way unless `fresh` asks for one
   * sent from now on (the write it must cover was acknowledged after the other left).
   */
  async #flushEarly (fresh: boolean): Promise<void> {
    if (this.#backgroundFlush !== null) {
      if (!fresh) return await this.#backgroundFlush
      await this.#backgroundFlush.catch(() => {})
      if (this.#backgroundFlush !== null) return await this.#flushEarly(true)
    }
    const marker = this.#log.flushSent()
    const flush = settle(this.#flushEngines!().map((engine) => engine.submit({ type: NBD_CMD.FLUSH, flags: 0, offset: 0n, length: 0 }, undefined, { beforeSend: this.#atGate })))
      .then(async () => {
        // A closing connection's writes its own FLUSH did not cover: kept for the next barrier.
        if (!await this.#drainsDurable()) {
          this.#owed = true
          return
        }
        this.#flushDone(marker)
      })
    this.#backgroundFlush = flush
    try {
      await flush
    } finally {
      if (this.#backgroundFlush === flush) this.#backgroundFlush = null
    }
  }

  /**
   * FLUSH as a barrier: after every earlier write's life on the wire, before every later one.
   * Sent to each of `engines` (one per server whose cache may hold writes: paths in
   * round-robin), and done once all are.
   */
  async flush (engines: readonly Engine[], signal: AbortSignal | undefined): Promise<void> {
    const entering = this.#order.enter('flush', signal)
    if (entering !== undefined) await entering
    const marker = this.#log.flushSent()
    // One place per FLUSH, and one for what follows them here (a rewrite of the log must not
    // meet a later write of the same range).
    let left = engines.length + 1
    const leave = (): void => { if (--left === 0) this.#order.leave('flush') }
    try {
      await settle(engines.map((engine) => {
        // Its life on the wire ends, or it is in doubt (then later writes need not wait for it:
        // a FLUSH changes no data); whichever comes first lets go of its place, once.
        let done = false
        const once = (): void => { if (!done) { done = true; leave() } }
        return engine.submit({ type: NBD_CMD.FLUSH, flags: 0, offset: 0n, length: 0 }, signal, { beforeSend: this.#atGate, settled: once, inDoubt: once })
      }))
      let durable = true
      if (!await this.#drainsDurable() || this.#owed) {
        // A connection that closed acknowledged writes no FLUSH of its own covered: they are
        // still in the log, so they are written again here and FLUSHed, inside the barrier.
        this.#owed = false
        durable = await this.#rewrite(engines).then(() => true, () => false)
      }
      if (durable) this.#flushDone(marker)
      else this.#lost = true
    } finally {
      leave()
    }
    // A reconnect while it was on its way (it was then sent again after the replay) counts too.
    if (this.#lost) {
      this.#lost = false
      throw new DurabilityError('writes acknowledged before the connection to the server was lost may not have reached stable storage, and could not be written again')
    }
  }

  /** The log written again through `engines[0]`, then a FLUSH on every one of them. */
  async #rewrite (engines: readonly Engine[]): Promise<void> {
    if (!this.#log.complete) throw new DurabilityError('the replay log is not complete')
    const target = engines[0]!
    await writePieces(this.#log.pieces(), (command) => target.submit(command, undefined, { beforeSend: this.#atGate }))
    await settle(engines.map((engine) => engine.submit({ type: NBD_CMD.FLUSH, flags: 0, offset: 0n, length: 0 }, undefined, { beforeSend: this.#atGate })))
  }

  /** Records up to `marker` are durable; while a replay reads them, later. */
  #flushDone (marker: number): void {
    if (this.#replaying === null) this.#log.flushDone(marker)
    else this.#flushedDuringReplay = Math.max(this.#flushedDuringReplay, marker)
  }

  /**
   * Engine `recover` hook: before a new connection takes requests, the log's pieces are
   * written again on it. With several connections a loss is replayed once: a connection lost
   * before a replay that has finished (or is running) does not replay again.
   */
  async recover (channel: RecoveryChannel): Promise<void> {
    if (!this.#log.dirty) return
    if (this.#replayedAt > channel.lostAt) return
    const running = this.#replaying
    if (running !== null && running.startedAt > channel.lostAt) {
      await running.done
      return
    }
    if (!this.#log.complete) {
      // Something acknowledged is not in the log: the next FLUSH cannot vouch for it.
      this.#lost = true
    }
    const startedAt = performance.now()
    const gate = deferred()
    this.#gate = gate
    const done = this.#replay(channel)
    this.#replaying = { startedAt, done: done.catch(() => {}) }
    try {
      await done
      this.#replayedAt = startedAt
    } finally {
      if (this.#replaying?.startedAt === startedAt) this.#replaying = null
      if (this.#gate === gate) this.#gate = null
      gate.resolve()
      if (this.#replaying === null && this.#flushedDuringReplay >= 0) {
        this.#log.flushDone(this.#flushedDuringReplay)
        this.#flushedDuringReplay = -1
      }
    }
  }

  async #replay (channel: RecoveryChannel): Promise<void> {
    await writePieces(this.#log.pieces(), (command) => channel.submit(command))
  }

}

function kindOf (command: Command): PieceKind {
  return command.type === NBD_CMD.WRITE ? 'data' : command.type === NBD_CMD.TRIM ? 'trim' : 'zero'
}

/** Writes the log's pieces again, REPLAY_DEPTH at a time. */
async function writePieces (pieces: Piece[], submit: (command: Command) => Promise<unknown>): Promise<void> {
  const worker = async (): Promise<void> => {
    for (let piece = pieces.shift(); piece !== undefined; piece = pieces.shift()) {
      await submit(replayCommand(piece.kind, piece.start, Number(piece.end - piece.start), piece.data))
    }
  }
  await Promise.all(Array.from({ length: REPLAY_DEPTH }, worker))
}

function replayCommand (kind: PieceKind, offset: bigint, length: number, data: Buffer | undefined): Command {
  if (kind === 'data') return { type: NBD_CMD.WRITE, flags: 0, offset, length, payload: data! }
  return { type: kind === 'trim' ? NBD_CMD.TRIM : NBD_CMD.WRITE_ZEROES, flags: 0, offset, length }
}
