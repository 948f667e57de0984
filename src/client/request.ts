/**
 * One NBD command on its way through the engine: what was asked, where its reply goes, and
 * its place among the requests in flight.
 */
import type { NbdCmd } from '../protocol/constants.ts'
import type { ReadAssembly } from '../protocol/read-assembly.ts'
import type { StatusChunk } from '../protocol/block-status.ts'
import type { ServerError } from '../errors.ts'
import type { PayloadSink } from '../transport/socket-reader.ts'
import type { Connection } from '../connector/connection.ts'

export interface Command {
  readonly type: NbdCmd
  readonly flags: number
  readonly offset: bigint
  readonly length: number
  /** WRITE: exactly `length` bytes, sent as they are (never copied). */
  readonly payload?: Buffer
  /** READ: exactly `length` bytes, filled straight from the socket. */
  readonly dest?: Buffer
}

/** What a finished command hands back: status chunks for BLOCK_STATUS, nothing otherwise. */
export type CommandResult = StatusChunk[] | undefined

export class Request implements PayloadSink {
  readonly type: NbdCmd
  readonly flags: number
  readonly offset: bigint
  readonly length: number
  readonly payload: Buffer | undefined
  /** READ target; null once the caller gave up, and the reply's bytes are then dropped. */
  dest: Buffer | null
  /** Set while the socket may read straight into dest (see SocketReader). */
  revoke: (() => void) | null = null

  /** The connection the request was last sent on. */
  conn: Connection | null = null
  /** Wire cookie while in flight, 0 otherwise. */
  cookie = 0
  /** Index in the engine's slot table while in flight, -1 otherwise. */
  slot = -1
  /** Parked in receiveReplies, waiting for another request to finish its chunk (QEMU's `receiving`). */
  receiving = false
  wake: (() => void) | null = null
  /** When the request went out (performance.now()), for the stall check. */
  sentAt = 0
  /** The caller stopped waiting (AbortSignal): the reply is still consumed, its result dropped. */
  abandoned = false
  /** The WRITE payload is queued in the socket and may still be read from the caller's buffer. */
  payloadQueued = false
  onPayloadReleased: (() => void) | null = null
  /** How many times the request was sent again after a reconnect. */
  attempts = 0

  // Reply state, reset for every attempt.
  serverError: ServerError | undefined = undefined
  structured = false
  assembly: ReadAssembly | undefined = undefined
  /** The READ reply was a single chunk covering the whole request. */
  wholeChunk = false
  statusChunks: StatusChunk[] | undefined = undefined

  constructor (command: Command) {
    this.type = command.type
    this.flags = command.flags
    this.offset = command.offset
    this.length = command.length
    this.payload = command.payload
    this.dest = command.dest ?? null
  }

  /** Called by the socket once the payload has left our hands (flushed, or the socket died). */
  readonly releasePayload = (): void => {
    this.payloadQueued = false
    const notify = this.onPayloadReleased
    this.onPayloadReleased = null
    notify?.()
  }

  resetReply (): void {
    this.serverError = undefined
    this.structured = false
    this.assembly = undefined
    this.wholeChunk = false
    this.statusChunks = undefined
  }
}
