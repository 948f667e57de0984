/**
 * The reply to one request, as a pure state machine: headers and payload bytes in, steps and
 * an outcome out. No sockets, timers or promises: the receiver does the reading and feeds the
 * bytes back, so every rule here is tested on byte fixtures (test/client/reply.test.ts).
 *
 *            header()                      payload(bytes) / data()
 *   ┌──────► HEADER ──┬── simple, no data ─────────────────────────────► DONE
 *   │                 ├── simple READ ─────────► DATA (into dest) ─────► DONE
 *   │                 ├── OFFSET_DATA ─► PAYLOAD (8-byte offset) ─► DATA ──┐
 *   │                 ├── hole, status, error ─► PAYLOAD (whole chunk) ────┤
 *   │                 └── NONE ─────────────────────────────────────────── ┤
 *   └──────────────────────── chunk without DONE ◄────────────────────────┴── DONE flag ─► DONE
 *
 * A rule the server breaks throws ProtocolError: the connection is out of step and must die.
 * A server error (error reply, ERROR chunk) is recorded and the reply runs on to its end; the
 * first one is the one reported (QEMU keeps request_ret the same way). verify() and result()
 * turn a complete reply into the request's outcome.
 */
import { ProtocolError, ServerError } from '../../errors.ts'
import { NBD_CMD, NBD_CMD_FLAG, NBD_REPLY_FLAG_DONE } from '../../protocol/constants.ts'
import { classifyChunk, parseErrorChunk, parseOffsetHole } from '../../protocol/chunks.ts'
import { parseBlockStatus, type StatusChunk } from '../../protocol/block-status.ts'
import { errnoFromNbd } from '../../protocol/errno.ts'
import { commandName } from '../../protocol/names.ts'
import { ReadAssembly } from '../../protocol/read-assembly.ts'
import type { ReplyHeader, ReplyMode } from '../../protocol/reply.ts'

/** What the receiver does next. */
export const STEP = {
  /** Read the next chunk header of this reply and call header(). */
  HEADER: 0,
  /** Read `length` bytes and call payload() with them. */
  PAYLOAD: 1,
  /** Read `length` bytes into the destination at `at`, then call data(). */
  DATA: 2,
  /** The reply is complete: call verify(), then result(). */
  DONE: 3
} as const
export type Step = (typeof STEP)[keyof typeof STEP]

/** What a finished command hands back: status chunks for BLOCK_STATUS, nothing otherwise. */
export type CommandResult = StatusChunk[] | undefined

export interface ReplyTarget {
  readonly type: number
  readonly flags: number
  readonly offset: bigint
  readonly length: number
  /** READ destination; null once the caller gave up (the bytes are then dropped). */
  readonly dest: Buffer | null
}

type Pending = 'none' | 'offset-data' | 'offset-hole' | 'block-status' | 'error'

/** Reply chunks seen, by kind (simple replies count as 'simple'): the engine's statistics. */
export interface ChunkCounters {
  simple: number
  data: number
  hole: number
  status: number
  error: number
  none: number
}

export class Reply {
  #req: ReplyTarget
  readonly #mode: ReplyMode
  readonly #contexts: ReadonlyMap<number, string>
  readonly #counters: ChunkCounters | undefined
  /** For DATA and PAYLOAD steps: where and how much, and what the bytes are (for errors). */
  at = 0
  length = 0
  what = 'reply'
  /** A chunk arrived (the reply is structured from then on). */
  #structured = false
  /** The current chunk carries DONE. */
  #last = false
  #pending: Pending = 'none'
  #header: ReplyHeader | null = null
  #assembly: ReadAssembly | undefined
  /** One OFFSET_DATA chunk covered the whole request: nothing to reassemble. */
  #whole = false
  #status: StatusChunk[] | undefined
  /** The first server error of this reply. */
  serverError: ServerError | undefined

  constructor (req: ReplyTarget, mode: ReplyMode, contexts: ReadonlyMap<number, string>, counters?: ChunkCounters) {
    this.#req = req
    this.#mode = mode
    this.#contexts = contexts
    this.#counters = counters
  }

  /**
   * The same reply object for the next request of its cookie slot (a link keeps one per slot:
   * CookieTable.replyFor), as new.
   */
  reuse (req: ReplyTarget): this {
    this.#req = req
    this.at = 0
    this.length = 0
    this.what = 'reply'
    this.#structured = false
    this.#last = false
    this.#pending = 'none'
    this.#header = null
    this.#assembly = undefined
    this.#whole = false
    this.#status = undefined
    this.serverError = undefined
    return this
  }

  /** A reply header for this request arrived. */
  header (header: ReplyHeader): Step {
    const req = this.#req
    if (header.simple) return this.#simple(header)
    this.#structured = true
    if (header.offset !== undefined && header.offset !== req.offset) {
      throw new ProtocolError(`extended reply for offset ${header.offset} answers a request at ${req.offset}`)
    }
    this.#header = header
    this.#last = (header.flags & NBD_REPLY_FLAG_DONE) !== 0
    const kind = classifyChunk(header, req.type, req.length, this.#mode)
    this.#pending = kind
    const counters = this.#counters
    if (counters !== undefined) {
      if (kind === 'offset-data') counters.data++
      else if (kind === 'offset-hole') counters.hole++
      else if (kind === 'block-status') counters.status++
      else if (kind === 'error') counters.error++
      else counters.none++
    }
    switch (kind) {
      case 'none':
        return STEP.DONE
      case 'offset-data':
        // The offset first; the data then goes straight into place.
        this.length = 8
        this.what = 'OFFSET_DATA offset'
        return STEP.PAYLOAD
      default:
        this.length = header.length
        this.what = kind === 'offset-hole' ? 'OFFSET_HOLE chunk' : kind === 'block-status' ? 'BLOCK_STATUS chunk' : 'error chunk'
        return STEP.PAYLOAD
    }
  }

  /**
   * The bytes a PAYLOAD step asked for: `length` of them in `buf` from `at` (the engine hands
   * the socket's own buffer, read in place; see SocketReader.tryParse).
   */
  payload (buf: Buffer, at = 0): Step {
    const header = this.#header!
    const req = this.#req
    const bytes = this.#pending === 'offset-data' || (at === 0 && buf.length === this.length) ? buf : buf.subarray(at, at + this.length)
    switch (this.#pending) {
      case 'offset-data': {
        const chunkOffset = buf.readBigUInt64BE(at)
        const dataLength = header.length - 8
        if (this.#last && this.#assembly === undefined && dataLength === req.length && chunkOffset === req.offset) {
          // The common reply: one chunk with all the data.
          this.#whole = true
          this.at = 0
        } else {
          this.at = this.#reassembly().addContent(chunkOffset, dataLength, 'OFFSET_DATA chunk')
        }
        this.length = dataLength
        this.what = 'OFFSET_DATA payload'
        return STEP.DATA
      }
      case 'offset-hole': {
        const hole = parseOffsetHole(bytes)
        const at = this.#reassembly().addContent(hole.offset, hole.size, 'OFFSET_HOLE chunk')
        req.dest?.fill(0, at, at + hole.size)
        return this.#next()
      }
      case 'block-status': {
        const chunk = parseBlockStatus(bytes, this.#mode === 'extended', req.length, (req.flags & NBD_CMD_FLAG.REQ_ONE) !== 0)
        if (!this.#contexts.has(chunk.contextId)) {
          throw new ProtocolError(`BLOCK_STATUS for meta context id ${chunk.contextId}, which was not selected`)
        }
        this.#status ??= []
        if (this.#status.some((c) => c.contextId === chunk.contextId)) {
          throw new ProtocolError(`two BLOCK_STATUS chunks for meta context id ${chunk.contextId} in one reply`)
        }
        this.#status.push(chunk)
        return this.#next()
      }
      case 'error': {
        const chunk = parseErrorChunk(header.type, bytes)
        if (chunk.offset !== undefined) {
          if (req.type === NBD_CMD.READ) {
            this.#reassembly().addErrorOffset(chunk.offset)
          } else if (chunk.offset < req.offset || chunk.offset >= req.offset + BigInt(req.length)) {
            throw new ProtocolError(`ERROR_OFFSET at ${chunk.offset} lies outside the request ${req.offset}+${req.length}`)
          }
        }
        this.serverError ??= serverError(chunk.error, chunk.message, chunk.offset)
        return this.#next()
      }
      case 'none':
        throw new Error('internal: payload for a chunk that has none')
    }
  }

  /** The bytes a DATA step asked for are in the destination. */
  data (): Step {
    return this.#structured ? this.#next() : STEP.DONE
  }

  /**
   * The reply is complete: throws ProtocolError if, taken whole, it broke a rule that leaves
   * the stream in doubt (a READ that does not cover its range); the connection must die.
   */
  verify (): void {
    const req = this.#req
    if (this.serverError !== undefined) return
    if (req.type === NBD_CMD.READ && this.#structured && !this.#whole) {
      const problem = this.#assembly === undefined ? 'no data' : this.#assembly.problem
      if (problem !== undefined) throw new ProtocolError(`READ reply for ${req.offset}+${req.length} ended with DONE without data for every byte: ${problem}`)
    }
  }

  /** The request's outcome once verified: its result, or its failure (the connection lives on). */
  result (): CommandResult {
    if (this.serverError !== undefined) throw this.serverError
    if (this.#req.type === NBD_CMD.BLOCK_STATUS) {
      const got = this.#status?.length ?? 0
      if (got !== this.#contexts.size) {
        throw new ProtocolError(`BLOCK_STATUS reply covers ${got} of the ${this.#contexts.size} selected meta contexts`)
      }
    }
    return this.#status
  }

  #simple (header: ReplyHeader): Step {
    const req = this.#req
    if (this.#counters !== undefined) this.#counters.simple++
    if (this.#structured) throw new ProtocolError(`simple reply after structured chunks for ${commandName(req.type)}`)
    if (req.type === NBD_CMD.READ && this.#mode !== 'simple') {
      throw new ProtocolError('simple reply to READ after structured replies were negotiated')
    }
    if (header.error !== 0) {
      this.serverError = serverError(header.error, '')
      return STEP.DONE
    }
    if (req.type !== NBD_CMD.READ) return STEP.DONE
    this.at = 0
    this.length = req.length
    this.what = 'READ data'
    return STEP.DATA
  }

  #next (): Step {
    return this.#last ? STEP.DONE : STEP.HEADER
  }

  #reassembly (): ReadAssembly {
    const req = this.#req
    this.#assembly ??= new ReadAssembly(req.offset, req.length, (req.flags & NBD_CMD_FLAG.DF) !== 0)
    return this.#assembly
  }
}

export function serverError (value: number, message: string, offset?: bigint): ServerError {
  const errno = errnoFromNbd(value)
  const text = `server error ${errno}${message === '' ? '' : `: ${message}`}${offset === undefined ? '' : ` (at offset ${offset})`}`
  return new ServerError(errno, value, text, offset)
}
