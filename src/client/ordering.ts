/**
 * Everything that orders write-like requests against each other and keeps what they
 * acknowledged, for every connection of a client:
 *
 *   write ──► range lock (overlapping writes go in submission order)
 *         ──► write order (the FLUSH barrier) ──► engine (the gate: the epoch's replay done)
 *         ──► acknowledged: the ledger records it (a copy, or the caller's buffer for now)
 *         ──► life on the wire over: order left, range released ──► the caller is answered
 *
 *   flush ──► write order (after every earlier write's life on the wire) ──► engine
 *         ──► answered in the epoch it was sent in: the ledger's records before it are durable;
 *             in another: nothing is, so it is sent again after that epoch's replay
 *
 *   a connection lost (or drained) with writes no FLUSH of its own covered ──► a new epoch:
 *         the gate closes for every request on every connection; once no write is left on a
 *         wire, the replay writes the ledger again on a connected engine; the gate opens
 *
 * The range lock and the write order are released by the request's life on the wire (the
 * engine's `settled` hook), never by the caller's promise, so an aborted or timed-out write
 * still holds back a later overlapping write and the next FLUSH until the server is done with
 * it. The ledger (write-ledger.ts) states the invariant a FLUSH relies on.
 *
 * One replay runs at a time, for the newest epoch: a replay that an epoch change overtook, or
 * that failed, leaves the epoch unreplayed and runs again. Every wait at the gate is bounded:
 * the request's first failure (or its arrival at the gate) plus the reconnect delay (the
 * liveness bound when there is none); the replay's own requests are covered by liveness.
 */
import { performance } from 'node:perf_hooks'
import { AbortedError, ClosedError, DurabilityError, InDoubtError, NbdError, ReconnectDelayError, ServerError } from '../errors.ts'
import { NBD_CMD, NBD_CMD_FLAG } from '../protocol/constants.ts'
import type { Command, SubmitHooks } from './engine/request.ts'
import type { Engine, LedgerHooks } from './engine/engine.ts'
import type { Request } from './engine/request.ts'
import { deferred, type Deferred } from '../util/deferred.ts'
import { settle } from './geometry.ts'
import { RangeLock, type HeldRange } from './range-lock.ts'
import { WriteLedger, type FlushMark, type LedgerRecord, type Piece, type PieceKind } from './write-ledger.ts'
import { WriteOrder } from './write-order.ts'

/** Replay writes in flight at once. */
const REPLAY_DEPTH = 8
/** A failed replay is tried again after this, doubling up to a second. */
const REPLAY_RETRY_MS = 50

const FLUSH_COMMAND: Command = { type: NBD_CMD.FLUSH, flags: 0, offset: 0n, length: 0 }

interface Waiter {
  readonly resolve: () => void
  readonly reject: (err: Error) => void
}

export interface OrderingOptions {
  readonly logBytes: number
  /** The server has a volatile cache (it advertises FLUSH): acknowledged writes are kept. */
  readonly volatileCache: boolean
  /** How long a request may wait for a replay, from its first failure (ms). */
  readonly bound: () => number
}

export class Ordering {
  readonly #ranges = new RangeLock()
  readonly #order = new WriteOrder()
  readonly #ledger: WriteLedger
  readonly #logging: boolean
  readonly #bound: () => number
  #backgroundFlush: Promise<void> | null = null
  /** Where background FLUSHes go: one connection per server whose cache may hold writes. */
  #flushEngines: (() => Engine[]) | null = null
  #engines: () => readonly Engine[] = () => []
  /** Told of each write-like command before it is submitted, and of its outcome (multipath's identity bytes). */
  watch: ((command: Command) => ((ok: boolean) => void) | undefined) | undefined
  /** Write-like requests on some connection's wire (not in doubt): a replay waits for none. */
  #onWire = 0
  #quiet: Array<() => void> = []
  /** The replay's writes still on some connection's wire. */
  readonly #replayOnWire = new Set<{ readonly start: bigint, readonly end: bigint, readonly done: Deferred<void> }>()
  /** Requests waiting for the replay of the current epoch. */
  readonly #gateWaiters = new Set<Waiter>()
  #replaying: Promise<void> | null = null
  /** An engine changed state (the replay looks for a connected one again). */
  #stateChanged: (() => void) | null = null
  #closed: NbdError | null = null

  constructor (options: OrderingOptions) {
    this.#logging = options.volatileCache
    this.#ledger = new WriteLedger(options.volatileCache ? options.logBytes : 0)
    this.#bound = options.bound
  }

  /** What every engine of the client asks and tells (see LedgerHooks). */
  get hooks (): LedgerHooks {
    return { gate: (req) => this.gate(req), lost: (unflushed) => { this.#epochLost(unflushed) } }
  }

  /** Where background FLUSHes go (as a barrier FLUSH would: every path in multipath). */
  set flushEngines (pick: () => Engine[]) {
    this.#flushEngines = pick
  }

  set engines (all: () => readonly Engine[]) {
    this.#engines = all
    for (const engine of all()) engine.on('state', () => { this.#stateChanged?.() })
  }

  get ranges (): RangeLock {
    return this.#ranges
  }

  /** The ledger, for statistics and tests. */
  get ledger (): WriteLedger {
    return this.#ledger
  }

  /**
   * Sends a write-like command through `engine`, in order. `held`: the caller already holds a
   * range covering it (a read-modify-write holds the widened range across read and
   * write-back) and hears through `done` when this write's life on the wire is over.
   */
  write (engine: Engine, command: Command, signal: AbortSignal | undefined, held?: HeldWrite): Promise<void> {
    // The common write: its range and its place at once, no promise but the engine's.
    if (held === undefined) {
      let range: HeldRange | undefined
      try {
        range = this.#ranges.tryAcquire(command.offset, command.length)
      } catch (err) {
        return Promise.reject(err)
      }
      if (range !== undefined) {
        const entering = this.#order.enter('write', signal)
        if (entering === undefined) return this.#submit(engine, command, signal, range, undefined)
        return this.#writeAfterWaits(engine, command, signal, undefined, range, entering)
      }
    }
    return this.#writeAfterWaits(engine, command, signal, held, undefined, undefined)
  }

  /** The write once its range (unless `held` or `range`) and its place (unless `entering`) are there. */
  async #writeAfterWaits (engine: Engine, command: Command, signal: AbortSignal | undefined, held: HeldWrite | undefined, range: HeldRange | undefined, entering: Promise<void> | undefined): Promise<void> {
    if (held === undefined && range === undefined) range = await this.#ranges.acquire(command.offset, command.length, signal)
    try {
      entering ??= this.#order.enter('write', signal)
      if (entering !== undefined) await entering
    } catch (err) {
      if (range !== undefined) this.#ranges.release(range)
      held?.done()
      throw err
    }
    await this.#submit(engine, command, signal, range, held)
  }

  /** Range and place held: to the engine, with the hooks that keep them for its life on the wire. */
  #submit (engine: Engine, command: Command, signal: AbortSignal | undefined, range: HeldRange | undefined, held: HeldWrite | undefined): Promise<void> {
    const hooks = new OrderedWrite(this.#writeEvents, command, range, held, this.watch?.(command))
    return engine.submit(command, signal, hooks) as Promise<unknown> as Promise<void>
  }

  /** What each write's hooks (OrderedWrite) tell the ordering: one object for every write. */
  readonly #writeEvents: WriteEvents = {
    onWire: () => { this.#onWire++ },
    offWire: () => { this.#offWire() },
    acked: (command) => this.#logging
      ? this.#ledger.acknowledged(command.offset, kindOf(command), command.length, (command.flags & NBD_CMD_FLAG.FUA) !== 0, command.payload)
      : undefined,
    inDoubt: (range) => {
      this.#order.pin()
      this.#ranges.pin(range)
    },
    settled: (rec, range, done, pinned) => this.#settled(rec, range, done, pinned)
  }

  /** A write's life on the wire is over: its caller's buffer freed from the ledger, then others go. */
  #settled (rec: LedgerRecord | undefined, range: HeldRange | undefined, done: (() => void) | undefined, pinned: boolean): void | Promise<void> {
    if (rec === undefined || this.#ledger.keep(rec)) {
      this.#release(range, done, pinned)
      if (this.#ledger.wantsFlush) this.#flushEarly(false).catch(() => {})
      return
    }
    // Kept as the caller's own buffer (too big for the ring, or the ring is full): its caller
    // waits until a FLUSH covers it or the ring takes a copy.
    return this.#keep(rec).finally(() => { this.#release(range, done, pinned) })
  }

  /** The write's place in the barrier and its range go back: whoever waits for them goes. */
  #release (range: HeldRange | undefined, done: (() => void) | undefined, pinned: boolean): void {
    if (!pinned) this.#order.leave('write')
    if (range !== undefined) this.#ranges.release(range)
    done?.()
  }

  /**
   * Until a FLUSH covers `rec` (or the ring takes a copy), within the bound: a FLUSH that
   * failed, or came back in another epoch, is sent again once that epoch is replayed (the
   * replay writes this record from the caller's buffer). Past the bound the write is lost.
   */
  async #keep (rec: LedgerRecord): Promise<void> {
    const deadline = performance.now() + this.#bound()
    for (;;) {
      await this.#flushEarly(true).catch(() => {})
      if (this.#ledger.keep(rec)) return
      if (performance.now() >= deadline || this.#closed !== null) break
      if (!this.#ledger.replayed) await this.#waitReplayed(deadline, undefined).catch(() => {})
      else await sleep(REPLAY_RETRY_MS)
    }
    if (this.#ledger.lose(rec)) {
      // Its server may have lost it, and no copy is left to write again: the caller hears so.
      throw new DurabilityError('the write was acknowledged, then the connection to the server was lost before a FLUSH covered it, and it could not be written again within the bound')
    }
  }

  /**
   * A FLUSH in the background (not a barrier: it covers what was acknowledged before it was
   * sent, and writes go on meanwhile). Joins the one on its way unless `fresh` asks for one
   * sent from now on.
   */
  async #flushEarly (fresh: boolean): Promise<void> {
    if (this.#backgroundFlush !== null) {
      if (!fresh) return await this.#backgroundFlush
      await this.#backgroundFlush.catch(() => {})
      if (this.#backgroundFlush !== null) return await this.#flushEarly(true)
    }
    const flush = this.#sendFlushes(this.#flushEngines!(), undefined).then((mark) => {
      if (mark !== undefined) this.#ledger.flushed(mark)
    })
    this.#backgroundFlush = flush
    try {
      await flush
    } finally {
      if (this.#backgroundFlush === flush) this.#backgroundFlush = null
    }
  }

  /**
   * One FLUSH to each of `engines`; resolves with the mark they share (all sent in one epoch),
   * or undefined when they were not. `place`: each FLUSH's place in the barrier (see flush()).
   */
  async #sendFlushes (engines: readonly Engine[], signal: AbortSignal | undefined, place?: () => () => void): Promise<FlushMark | undefined> {
    const marks: Array<FlushMark | undefined> = engines.map(() => undefined)
    await settle(engines.map((engine, i) => {
      const once = place?.()
      return engine.submit(FLUSH_COMMAND, signal, {
        // Each send marks anew: a FLUSH sent again after a reconnect covers from there.
        wire: (on) => { if (on) marks[i] = this.#ledger.mark() },
        ...(once !== undefined && { settled: once, inDoubt: once })
      })
    }))
    const first = marks[0]
    if (first === undefined) return undefined
    let seq = first.seq
    for (const m of marks) {
      if (m === undefined || m.epoch !== first.epoch) return undefined
      if (m.seq < seq) seq = m.seq
    }
    return { seq, epoch: first.epoch }
  }

  /**
   * FLUSH as a barrier: after every earlier write's life on the wire, before every later one.
   * Sent to each of `engines` (one per server whose cache may hold writes: paths in
   * round-robin), and done once all are and the ledger says they covered what came before.
   */
  async flush (engines: readonly Engine[], signal: AbortSignal | undefined): Promise<void> {
    const called = this.#ledger.flushCalled()
    try {
      await this.#flushInOrder(engines, signal)
    } catch (err) {
      this.#ledger.lostBefore(called, false)
      throw err
    }
    if (this.#ledger.lostBefore(called)) {
      throw new DurabilityError('writes acknowledged before the connection to the server was lost may not have reached stable storage, and could not be written again')
    }
  }

  async #flushInOrder (engines: readonly Engine[], signal: AbortSignal | undefined): Promise<void> {
    const entering = this.#order.enter('flush', signal)
    if (entering !== undefined) await entering
    // One place per FLUSH, and one for the whole call: later writes go once every FLUSH is
    // over on the wire (or in doubt: a FLUSH changes no data) and this call is done.
    let left = 1
    const leave = (): void => { if (--left === 0) this.#order.leave('flush') }
    const place = (): () => void => {
      left++
      let done = false
      return () => { if (!done) { done = true; leave() } }
    }
    try {
      let deadline = Infinity
      for (;;) {
        const mark = await this.#sendFlushes(engines, signal, place)
        if (!this.#logging || (mark !== undefined && this.#ledger.flushed(mark))) break
        // A connection was lost while it was on its way: it covers nothing. Once that epoch's
        // replay is done it is sent again, within the bound from this first miss.
        if (deadline === Infinity) deadline = performance.now() + this.#bound()
        else if (performance.now() >= deadline) throw new ReconnectDelayError(`the FLUSH could not be answered in one server epoch within ${Math.round(this.#bound())} ms`)
        await this.#waitReplayed(deadline, signal)
      }
    } finally {
      leave()
    }
  }

  // ── epochs and the replay ────────────────────────────────────────────────────────────

  /** The engines' gate: every send waits while the current epoch is not replayed. */
  gate (req: Request): Promise<void> | undefined {
    if (this.#ledger.replayed) {
      if (!this.#logging || (this.#replayOnWire.size === 0 && !this.#ranges.anyInDoubt && !this.#ledger.anyPoisoned)) return undefined
      return this.#refused(req)
    }
    // From its first failure; one that never failed (sent after the loss) from now.
    const from = req.firstFailureAt >= 0 ? req.firstFailureAt : performance.now()
    return this.#waitReplayed(from + this.#bound(), req.signal)
  }

  /**
   * A request the gate refuses although the epoch is replayed: a write over a replay write in
   * doubt (it could land after this one), a read of content lost with an abandoned replay.
   */
  #refused (req: Request): Promise<void> | undefined {
    if (req.type === NBD_CMD.FLUSH || req.length === 0) return undefined
    const end = req.offset + BigInt(req.length)
    if (req.type === NBD_CMD.READ) {
      if (!this.#ledger.poisoned(req.offset, end)) return undefined
      return Promise.reject(new DurabilityError(`the data at ${req.offset}..${end} was acknowledged, then lost with the server's cache, and could not be written again: rewrite it`))
    }
    if (req.type !== NBD_CMD.WRITE && req.type !== NBD_CMD.WRITE_ZEROES && req.type !== NBD_CMD.TRIM) return undefined
    if (this.#ranges.overlapsInDoubt(req.offset, req.length)) {
      return Promise.reject(new InDoubtError(`a write to ${req.offset}..${end} is refused: a replay of an earlier write there was sent to a server that stopped answering, and may still run there`))
    }
    // A replay write answered early (its connection is draining) is still on that wire: a
    // newer write there waits for its end (bounded by the drain, then it is in doubt).
    for (const r of this.#replayOnWire) if (r.start < end && req.offset < r.end) return r.done.promise
    return undefined
  }

  #epochLost (unflushed: boolean): void {
    if (!this.#logging || this.#closed !== null || !unflushed) return
    this.#ledger.newEpoch()
    if (this.#replaying === null) {
      this.#replaying = this.#replayLoop()
      this.#replaying.catch(() => {})
    }
  }

  /** Replays until the newest epoch is replayed (or the client closes). */
  async #replayLoop (): Promise<void> {
    let retry = REPLAY_RETRY_MS
    /** When the server first refused this epoch's replay (-1: it has not), and which epoch. */
    let refusedSince = -1
    let refusedEpoch = -1
    try {
      while (!this.#ledger.replayed && this.#closed === null) {
        const epoch = this.#ledger.epoch
        if (epoch !== refusedEpoch) refusedSince = -1
        await this.#whenQuiet()
        if (epoch !== this.#ledger.epoch) continue
        const pieces = this.#ledger.pieces()
        if (pieces.length === 0) {
          this.#ledger.replayDone(epoch)
          continue
        }
        const engine = await this.#connectedEngine()
        if (engine === undefined) return
        if (epoch !== this.#ledger.epoch) continue
        try {
          await writePieces(this.#ledger.pieces(), (command) => this.#replayOne(engine, command))
          this.#ledger.replayDone(epoch)
          retry = REPLAY_RETRY_MS
          refusedSince = -1
        } catch (err) {
          // A lost connection starts the next epoch on its own; a server that refused a write
          // (EIO) is tried again a little later. Either way this epoch stays unreplayed, until
          // the server has refused it for longer than the bound: then the ledger's writes are
          // lost (every FLUSH that vouched for them says so) and requests go again.
          if (err instanceof ServerError) {
            const now = performance.now()
            if (refusedSince < 0) {
              refusedSince = now
              refusedEpoch = epoch
            }
            if (now - refusedSince >= this.#bound()) {
              this.#ledger.abandon(epoch)
              continue
            }
          }
          await sleep(retry)
          retry = Math.min(retry * 2, 1000)
        }
      }
    } finally {
      // In the same tick as the loop's last look at the ledger (no await in between): an epoch
      // lost from here on finds no loop running and starts one.
      this.#replaying = null
    }
    for (const w of this.#gateWaiters) w.resolve()
    this.#gateWaiters.clear()
  }

  /**
   * One write of the replay. Answered early or in doubt while still on a wire (its connection
   * stopped answering), it may still land: its range is pinned, as an ordinary write's would
   * be, until its life on that wire ends, so that nothing newer is sent there meanwhile. While
   * it is simply on a wire, a newer write there waits for it (see #refused).
   */
  #replayOne (engine: Engine, command: Command): Promise<unknown> {
    const entry = { start: command.offset, end: command.offset + BigInt(command.length), done: deferred() }
    let onWire = false
    let pinned: HeldRange | undefined
    const finish = (): void => { if (this.#replayOnWire.delete(entry)) entry.done.resolve() }
    const pin = (): void => { if (onWire && pinned === undefined) pinned = this.#ranges.holdInDoubt(command.offset, command.length) }
    this.#replayOnWire.add(entry)
    return engine.replay(command, {
      wire: (on) => {
        onWire = on
        if (on) return
        finish()
        if (pinned !== undefined) this.#ranges.release(pinned)
        pinned = undefined
      },
      inDoubt: () => {
        pin()
        finish()
      }
    }).then((result) => {
      finish()
      return result
    }, (err: unknown) => {
      // Not sent at all, or answered while its wire still holds it.
      pin()
      finish()
      throw err
    })
  }

  /** Resolves once no write-like request is on any wire (in doubt ones aside). */
  #whenQuiet (): Promise<void> | undefined {
    if (this.#onWire === 0) return undefined
    return new Promise((resolve) => { this.#quiet.push(resolve) })
  }

  #offWire (): void {
    if (--this.#onWire > 0) return
    const quiet = this.#quiet
    this.#quiet = []
    for (const resolve of quiet) resolve()
  }

  /** A connected engine: now, or once one connects; undefined once the client is closed. */
  async #connectedEngine (): Promise<Engine | undefined> {
    for (;;) {
      if (this.#closed !== null) return undefined
      const engine = this.#engines().find((e) => e.state === 'CONNECTED')
      if (engine !== undefined) return engine
      await new Promise<void>((resolve) => {
        // A state event, or a look now and then (an engine's first connect is not announced).
        const timer = setTimeout(() => { this.#stateChanged = null; resolve() }, 250)
        timer.unref()
        this.#stateChanged = () => { clearTimeout(timer); this.#stateChanged = null; resolve() }
      })
    }
  }

  /** Waits until the current epoch is replayed, until `deadline` (performance.now()) at the latest. */
  #waitReplayed (deadline: number, signal: AbortSignal | undefined): Promise<void> {
    if (this.#closed !== null) return Promise.reject(this.#closed)
    if (this.#ledger.replayed) return Promise.resolve()
    if (signal?.aborted === true) return Promise.reject(new AbortedError(signal.reason))
    return new Promise<void>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined
      const onAbort = (): void => { finish(new AbortedError(signal!.reason)) }
      const finish = (err?: Error): void => {
        if (!this.#gateWaiters.delete(waiter)) return
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        if (err === undefined) resolve()
        else reject(err)
      }
      const waiter: Waiter = { resolve: () => { finish() }, reject: finish }
      this.#gateWaiters.add(waiter)
      const ms = deadline - performance.now()
      timer = setTimeout(() => {
        finish(new ReconnectDelayError(`the writes acknowledged before a lost connection could not be written again within ${Math.round(this.#bound())} ms`))
      }, Math.max(0, ms))
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  /** The client is closing: waiters fail, the replay stops. */
  close (error: NbdError = new ClosedError('client closed')): void {
    if (this.#closed !== null) return
    this.#closed = error
    for (const w of [...this.#gateWaiters]) w.reject(error)
    this.#stateChanged?.()
    const quiet = this.#quiet
    this.#quiet = []
    for (const resolve of quiet) resolve()
  }
}

function kindOf (command: Command): PieceKind {
  return command.type === NBD_CMD.WRITE ? 'data' : command.type === NBD_CMD.TRIM ? 'trim' : 'zero'
}

function sleep (ms: number): Promise<void> {
  return new Promise((resolve) => { setTimeout(resolve, ms).unref() })
}

/** Writes the ledger's pieces again, REPLAY_DEPTH at a time. */
async function writePieces (pieces: Piece[], submit: (command: Command) => Promise<unknown>): Promise<void> {
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < pieces.length) {
      const piece = pieces[next++]!
      await submit(replayCommand(piece))
    }
  }
  await settle(Array.from({ length: Math.min(REPLAY_DEPTH, pieces.length) }, worker))
}

function replayCommand (piece: Piece): Command {
  const length = Number(piece.end - piece.start)
  if (piece.kind === 'data') return { type: NBD_CMD.WRITE, flags: 0, offset: piece.start, length, payload: piece.data! }
  return { type: piece.kind === 'trim' ? NBD_CMD.TRIM : NBD_CMD.WRITE_ZEROES, flags: 0, offset: piece.start, length }
}

/** A range a caller already holds for a write (a read-modify-write), and how it hears the end. */
interface HeldWrite {
  readonly range: HeldRange
  readonly done: () => void
}

interface WriteEvents {
  onWire: () => void
  offWire: () => void
  acked: (command: Command) => LedgerRecord | undefined
  inDoubt: (range: HeldRange) => void
  settled: (rec: LedgerRecord | undefined, range: HeldRange | undefined, done: (() => void) | undefined, pinned: boolean) => void | Promise<void>
}

/**
 * One write's hooks (SubmitHooks) as one object rather than a closure per hook: on its wire
 * or not, acknowledged (its ledger record), in doubt, and its life's end.
 */
class OrderedWrite implements SubmitHooks {
  readonly #events: WriteEvents
  readonly #command: Command
  readonly #range: HeldRange | undefined
  readonly #held: HeldWrite | undefined
  readonly #watched: ((ok: boolean) => void) | undefined
  #wired = false
  #pinned = false
  #rec: LedgerRecord | undefined = undefined

  constructor (events: WriteEvents, command: Command, range: HeldRange | undefined, held: HeldWrite | undefined, watched: ((ok: boolean) => void) | undefined) {
    this.#events = events
    this.#command = command
    this.#range = range
    this.#held = held
    this.#watched = watched
  }

  wire (on: boolean): void {
    if (on) {
      this.#wired = true
      this.#events.onWire()
    } else if (this.#wired) {
      this.#wired = false
      this.#events.offWire()
    }
  }

  acked (): void {
    this.#rec = this.#events.acked(this.#command)
  }

  inDoubt (): void {
    this.#pinned = true
    this.#events.inDoubt(this.#range ?? this.#held!.range)
    // Nothing waits for a write in doubt: the replay may overtake it (its caller was told
    // it failed, so either content is allowed there).
    if (this.#wired) {
      this.#wired = false
      this.#events.offWire()
    }
  }

  settled (ok: boolean): void | Promise<void> {
    this.#watched?.(ok)
    return this.#events.settled(this.#rec, this.#range, this.#held?.done, this.#pinned)
  }
}
