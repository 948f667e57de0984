/**
 * The copy engine: a fixed pool of workers, `requests` per connection, each with one buffer of
 * `requestSize` reused for every piece it copies (no copies of the data, no allocation per
 * request). Workers pull pieces from the planner and run read → zero detection → write.
 *
 *   planner ──► worker 1 [buf] ── read(lane 0) ── runs ── write/zero(lane 0) ──┐
 *          ──► worker 2 [buf] ── read(lane 1) ── runs ── write/zero(lane 1) ──┼─► progress
 *          ──► ...                                                             ┘
 *
 * Order: pieces are independent ranges, so writes to a seekable destination go out in any
 * order. A pipe destination takes them strictly in planner order (the sequencer); a pipe
 * source is read by one worker at a time (the read chain), which fixes the offsets.
 *
 * Zero runs (from BLOCK_STATUS or zero detection) are skipped when the destination already
 * reads zeroes (a new file, null:, --destination-is-zero) unless --allocated; else they become
 * the destination's zero() (a hole, WRITE_ZEROES, or written zeroes where nothing better
 * exists). Zero detection does not run for null:, which discards data and zeroes alike (the
 * extents the source reports are still skipped unread).
 *
 * The first failure stops every worker from taking new pieces; the copy settles once every
 * request has settled, then throws that failure, prefixed with the endpoint and the range.
 */
import { setMaxListeners } from 'node:events'
import { AbortedError, InvalidArgumentError, describeError } from '../errors.ts'
import type { CopyDestination, CopySource } from './endpoint.ts'
import { planPieces, type Piece } from './planner.ts'
import type { Progress } from './progress.ts'
import { zeroRuns } from './zero-detect.ts'

export interface CopyOptions {
  /** Bytes per read and write request. */
  readonly requestSize: number
  /** Requests in flight per connection. */
  readonly requests: number
  /** Zero detection block size; 0 turns it off. */
  readonly sparse: number
  /** Write zero runs too, allocated (WRITE_ZEROES with NO_HOLE, or zeroes). */
  readonly allocated: boolean
  /** The destination reads zeroes already: skip zero runs. */
  readonly destinationIsZero: boolean
  /** Make the destination durable at the end. */
  readonly flush: boolean
  /** Ask the source for its extents (BLOCK_STATUS). */
  readonly extents: boolean
  readonly progress?: Progress
  readonly signal?: AbortSignal
}

export interface CopyResult {
  /** Bytes of the source covered. */
  readonly bytes: number
  /** Bytes read as data. */
  readonly dataBytes: number
  /** Bytes skipped as zero runs (never read, or read and found zero). */
  readonly zeroBytes: number
  /** Workers (requests in flight) used. */
  readonly workers: number
}

/** A copy failure: what the endpoint said, with which end and range. `code` is the cause's. */
export class CopyError extends Error {
  readonly code: string | undefined
  constructor (message: string, cause: unknown) {
    super(message, { cause })
    this.code = (cause as { code?: string } | null)?.code
  }
}

interface Work extends Piece {
  /** Planner order, for a destination that takes writes in order. */
  readonly seq: number
}

/** Lets writes through in planner order. */
class Sequencer {
  #next = 0
  readonly #waiting = new Map<number, () => void>()

  turn (seq: number, signal: AbortSignal): Promise<void> {
    if (seq === this.#next) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const onAbort = (): void => { this.#waiting.delete(seq); reject(new AbortedError(signal.reason)) }
      if (signal.aborted) { onAbort(); return }
      signal.addEventListener('abort', onAbort, { once: true })
      this.#waiting.set(seq, () => { signal.removeEventListener('abort', onAbort); resolve() })
    })
  }

  done (seq: number): void {
    this.#next = seq + 1
    const wake = this.#waiting.get(this.#next)
    this.#waiting.delete(this.#next)
    wake?.()
  }
}

export async function copy (src: CopySource, dst: CopyDestination, options: CopyOptions): Promise<CopyResult> {
  if (src.size !== undefined && dst.size !== undefined && dst.size < src.size) {
    throw new InvalidArgumentError(`${dst.name}: the destination (${dst.size} bytes) is smaller than the source (${src.size} bytes)`)
  }
  if (options.signal?.aborted === true) throw new AbortedError(options.signal.reason)
  const lanes = Math.max(src.connections, dst.connections)
  const workers = options.requests * lanes
  const abort = new AbortController()
  const signal = abort.signal
  // Every request in flight listens on it.
  setMaxListeners(workers * 2 + 16, signal)
  const onUserAbort = (): void => { fail(new AbortedError(options.signal?.reason)) }
  options.signal?.addEventListener('abort', onUserAbort, { once: true })
  let failure: unknown
  const fail = (err: unknown): void => {
    failure ??= err
    abort.abort()
  }
  const skipZeroes = dst.seekable && !options.allocated && (dst.startsZero || options.destinationIsZero)
  const sequencer = dst.seekable ? undefined : new Sequencer()
  // Zero blocks matter only to a destination that keeps what it is sent.
  const detect = options.sparse > 0 && dst.seekable && dst.discards !== true
  let dataBytes = 0
  let zeroBytes = 0

  const next = src.readInto !== undefined ? plannedWork(src, options, signal) : undefined
  const streamed = src.readNext !== undefined ? streamReader(src, dst, signal) : undefined

  const zero = async (offset: number, length: number, lane: number): Promise<void> => {
    zeroBytes += length
    if (skipZeroes) return
    await wrap(dst.zero(offset, length, lane, { allocated: options.allocated }, signal), dst.name, 'zero', offset, length)
  }

  const store = async (view: Buffer, offset: number, lane: number): Promise<void> => {
    if (!detect) {
      dataBytes += view.length
      await wrap(dst.write(view, offset, lane, signal), dst.name, 'write', offset, view.length)
      return
    }
    const runs = zeroRuns(view, options.sparse)
    if (runs.length === 1) {
      if (runs[0]!.zero) await zero(offset, view.length, lane)
      else await store1(view, offset, lane)
      return
    }
    await settleAll(runs.map((r) => r.zero
      ? zero(offset + r.at, r.length, lane)
      : store1(view.subarray(r.at, r.at + r.length), offset + r.at, lane)))
  }
  const store1 = (view: Buffer, offset: number, lane: number): Promise<void> => {
    dataBytes += view.length
    return wrap(dst.write(view, offset, lane, signal), dst.name, 'write', offset, view.length)
  }

  const worker = async (index: number): Promise<void> => {
    const lane = index % lanes
    let buffer: Buffer | undefined
    while (!signal.aborted) {
      let work: Work | undefined
      if (next !== undefined) {
        const item = await next.next()
        if (item.done === true) return
        work = item.value
        if (!work.zero) {
          buffer ??= Buffer.allocUnsafe(options.requestSize)
          const view = work.length === buffer.length ? buffer : buffer.subarray(0, work.length)
          await wrap(src.readInto!(view, work.offset, lane, signal), src.name, 'read', work.offset, work.length)
        }
      } else {
        buffer ??= Buffer.allocUnsafe(options.requestSize)
        work = await streamed!.read(buffer)
        if (work === undefined) return
      }
      if (sequencer !== undefined) await sequencer.turn(work.seq, signal)
      if (work.zero) await zero(work.offset, work.length, lane)
      else await store(work.length === buffer!.length ? buffer! : buffer!.subarray(0, work.length), work.offset, lane)
      sequencer?.done(work.seq)
      options.progress?.add(work.length)
    }
  }

  try {
    await Promise.allSettled(Array.from({ length: workers }, (_, i) => worker(i).catch((err: unknown) => { fail(err) })))
    if (failure !== undefined) throw failure
    const bytes = streamed?.total() ?? src.size!
    if (streamed !== undefined) await dst.setSize?.(bytes)
    if (options.flush) await wrap(dst.flush(signal), dst.name, 'flush', 0, 0)
    return { bytes, dataBytes, zeroBytes, workers }
  } finally {
    options.signal?.removeEventListener('abort', onUserAbort)
    await next?.return(undefined).catch(() => {})
  }
}

/** The planner's pieces, numbered. */
async function * plannedWork (src: CopySource, options: CopyOptions, signal: AbortSignal): AsyncGenerator<Work> {
  const size = src.size!
  const extents = options.extents && src.extents !== undefined && size > 0 ? src.extents(0, size, signal) : undefined
  let seq = 0
  try {
    for await (const piece of planPieces(extents, 0, size, options.requestSize)) yield { ...piece, seq: seq++ }
  } catch (err) {
    throw new CopyError(`${src.name}: block status: ${describeError(err)}`, err)
  }
}

/** A pipe source: one read at a time, each taking the next offset. */
function streamReader (src: CopySource, dst: CopyDestination, signal: AbortSignal): { read: (buffer: Buffer) => Promise<Work | undefined>, total: () => number } {
  let chain: Promise<unknown> = Promise.resolve()
  let offset = 0
  let seq = 0
  let eof = false
  const read = (buffer: Buffer): Promise<Work | undefined> => {
    const result = chain.then(async (): Promise<Work | undefined> => {
      if (eof || signal.aborted) return undefined
      const n = await wrap(src.readNext!(buffer, signal), src.name, 'read', offset, buffer.length)
      if (n < buffer.length) eof = true
      if (n === 0) return undefined
      if (dst.size !== undefined && offset + n > dst.size) {
        throw new InvalidArgumentError(`${dst.name}: the source is larger than the destination (${dst.size} bytes)`)
      }
      const work: Work = { offset, length: n, zero: false, seq: seq++ }
      offset += n
      return work
    })
    chain = result.catch(() => {})
    return result
  }
  return { read, total: () => offset }
}

async function wrap<T> (request: Promise<T>, name: string, what: string, offset: number, length: number): Promise<T> {
  try {
    return await request
  } catch (err) {
    if (err instanceof AbortedError || err instanceof CopyError) throw err
    const range = what === 'flush' ? '' : ` at ${offset}${length > 0 ? `+${length}` : ''}`
    throw new CopyError(`${name}: ${what}${range}: ${describeError(err)}`, err)
  }
}

/** Settles every request, then throws the first failure (buffers are free once it returns). */
async function settleAll (work: ReadonlyArray<Promise<unknown>>): Promise<void> {
  const results = await Promise.allSettled(work)
  for (const r of results) if (r.status === 'rejected') throw r.reason
}
