/**
 * One negotiated connection: the socket, the reader that owns its read side, and what the
 * handshake learnt. Opening one is `establish`: connect, then negotiate, within one deadline.
 */
import type { Duplex } from 'node:stream'
import { AbortedError, HandshakeError, TimeoutError } from '../errors.ts'
import { SocketReader } from '../transport/socket-reader.ts'
import type { OpenSocket } from '../transport/open-socket.ts'
import { linkedSignal } from '../util/abort.ts'
import type { ExportInfo } from './export-info.ts'
import { negotiate, type NegotiateOptions } from './handshake/negotiate.ts'
import { optAbort } from './handshake/opt-abort.ts'
import { OptionChannel } from './handshake/option-channel.ts'

export interface Connection {
  readonly socket: Duplex
  readonly reader: SocketReader
  readonly info: ExportInfo
  /** With several paths to the export: which one (0-based) this connection runs over. */
  readonly path?: number
}

export interface EstablishOptions extends NegotiateOptions {
  readonly open: OpenSocket
  /** Bound on connect + handshake, ms (0 = none). A server that accepts but never greets
   * (qemu-nbd --shared=1 while busy) would otherwise hang us. */
  readonly handshakeTimeout: number
}

export type Establish = (signal: AbortSignal) => Promise<Connection>

/** Connects and negotiates once. Every failure closes the socket it opened. */
export async function establish (options: EstablishOptions, signal?: AbortSignal): Promise<Connection> {
  return await withHandshake(options, signal, `no complete NBD handshake within ${options.handshakeTimeout} ms`, true, async (ch, deadline) => {
    const info = await negotiate(ch, options, deadline)
    return { socket: ch.socket, reader: ch.reader, info }
  })
}

export interface HandshakeOptions {
  readonly open: OpenSocket
  /** Bound on connect + handshake, ms (0 = none). */
  readonly handshakeTimeout: number
}

/**
 * The one handshake driver (establish and listExports): opens the byte stream and runs `body`
 * on its option channel within one deadline. A server that refused something is left
 * politely (NBD_OPT_ABORT); a protocol violation or a dead stream gets a hard close. `keep`:
 * the socket stays open after `body` succeeds (for transmission); otherwise it is closed.
 */
export async function withHandshake<T> (
  options: HandshakeOptions, signal: AbortSignal | undefined, timeoutMessage: string, keep: boolean,
  body: (ch: OptionChannel, deadline: AbortSignal) => Promise<T>
): Promise<T> {
  const deadline = linkedSignal([signal], options.handshakeTimeout, () => new TimeoutError(timeoutMessage))
  let socket: Duplex | undefined
  let ch: OptionChannel | undefined
  const onAbort = (): void => {
    const reason: unknown = deadline.signal.reason
    ch?.reader.fail(reason instanceof Error ? reason : new TimeoutError('handshake aborted'))
    socket?.destroy()
  }
  deadline.signal.addEventListener('abort', onAbort, { once: true })
  try {
    socket = await options.open(deadline.signal)
    ch = new OptionChannel(socket, new SocketReader(socket))
    if (deadline.signal.aborted) onAbort()
    try {
      const value = await body(ch, deadline.signal)
      if (!keep) ch.socket.destroy()
      return value
    } catch (err) {
      if (err instanceof HandshakeError && !deadline.signal.aborted) await optAbort(ch)
      throw err
    }
  } catch (err) {
    ch?.socket.destroy()
    socket?.destroy()
    if (signal?.aborted === true) throw new AbortedError(signal.reason)
    const reason: unknown = deadline.signal.reason
    throw deadline.signal.aborted && reason instanceof Error ? reason : err
  } finally {
    deadline.signal.removeEventListener('abort', onAbort)
    deadline.dispose()
  }
}
