/**
 * The handshake's view of a connection: send an option, read its replies up to the final one.
 * Options never overlap (the client MUST wait for the final reply before the next option).
 * Every reply is counted against its option's budget and the handshake's before its payload
 * is read (OPTION_REPLY_BUDGET): a server cannot make us hold more than that.
 */
import type { Duplex } from 'node:stream'
import { HandshakeError, ProtocolError } from '../../errors.ts'
import { NBD_OPT, NBD_OPTION_REPLY_HEADER, NBD_REP } from '../../protocol/constants.ts'
import { optionName } from '../../protocol/names.ts'
import {
  encodeOptionRequest, HANDSHAKE_REPLY_BYTES, isErrorReply, OPTION_REPLY_BUDGET, parseOptionError, parseOptionReplyHeader,
  type OptionError
} from '../../protocol/option.ts'
import type { SocketReader } from '../../transport/socket-reader.ts'

const EMPTY = Buffer.alloc(0)

export class OptionChannel {
  socket: Duplex
  reader: SocketReader
  /** Bytes we wrote, for tests that check what went out in clear before TLS. */
  bytesWritten = 0
  /** The channel runs over TLS (STARTTLS succeeded). */
  tls = false
  /** Option reply bytes received so far, headers included, over the whole handshake. */
  replyBytes = 0

  constructor (socket: Duplex, reader: SocketReader) {
    this.socket = socket
    this.reader = reader
  }

  send (bytes: Buffer): void {
    this.bytesWritten += bytes.length
    this.socket.write(bytes)
  }

  read (n: number, what: string): Promise<Buffer> {
    return this.reader.take(n, what)
  }

  /**
   * Sends `option` and hands every non-final reply to `onReply`. Resolves with undefined on
   * ACK, or with the error reply. Two errors end the negotiation wherever they come from:
   * ERR_SHUTDOWN (the client MUST then soft-disconnect) and ERR_TLS_REQD on an option other
   * than INFO/GO (no option will work without TLS).
   */
  async exchange (option: number, data: Buffer | undefined, onReply: (type: number, payload: Buffer) => void): Promise<OptionError | undefined> {
    this.send(encodeOptionRequest(option, data))
    const budget = OPTION_REPLY_BUDGET[option] ?? { replies: 0, bytes: 0 }
    let replies = 0
    let bytes = 0
    for (;;) {
      const header = parseOptionReplyHeader(await this.read(NBD_OPTION_REPLY_HEADER, `reply to ${optionName(option)}`), option)
      const size = NBD_OPTION_REPLY_HEADER + header.length
      this.replyBytes += size
      if (this.replyBytes > HANDSHAKE_REPLY_BYTES) {
        throw new ProtocolError(`the server sent more than ${HANDSHAKE_REPLY_BYTES} bytes of option replies in one handshake`)
      }
      if (!isErrorReply(header.type) && header.type !== NBD_REP.ACK) {
        replies++
        bytes += size
        if (replies > budget.replies || bytes > budget.bytes) {
          throw new ProtocolError(`the server sent more than ${budget.replies} replies or ${budget.bytes} bytes in answer to ${optionName(option)}`)
        }
      }
      const payload = header.length === 0 ? EMPTY : await this.read(header.length, `${optionName(option)} reply data`)
      if (isErrorReply(header.type)) {
        const err = parseOptionError(header.type, payload)
        if (err.type === NBD_REP.ERR_SHUTDOWN) throw refused(option, err, 'the server is shutting down')
        if (err.type === NBD_REP.ERR_TLS_REQD && option !== NBD_OPT.GO && option !== NBD_OPT.INFO) throw refused(option, err, 'the server requires TLS')
        return err
      }
      if (header.type === NBD_REP.ACK) return undefined
      onReply(header.type, payload)
    }
  }
}

/** A HandshakeError for a refused option, with the server's own message when it sent one. */
export function refused (option: number, err: OptionError, summary: string): HandshakeError {
  const detail = err.message === '' ? err.name : `${err.name}: ${err.message}`
  return new HandshakeError(`${summary} (${optionName(option)} → ${detail})`, { option: optionName(option), reply: err.name })
}

export function unexpectedReply (option: number): (type: number) => never {
  return (type) => {
    // parseOptionReplyHeader already refuses reply types that do not fit the option, so only
    // a bug gets here.
    throw new Error(`internal: unhandled reply ${type} to ${optionName(option)}`)
  }
}
