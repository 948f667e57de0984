/**
 * The send side of one connection (QEMU's nbd_co_send_request). The write itself is
 * synchronous, so two requests can never interleave on the wire; sendMutex is held only while
 * a sender waits for the socket to drain, and everyone behind it queues on the mutex (QEMU
 * holds send_mutex across its blocking write the same way).
 *
 * Everything sent in one tick leaves in one writev: the socket is corked on the first write
 * of a tick and uncorked on the next. Payloads are queued by reference, never copied.
 */
import { Mutex } from 'async-mutex'
import { AbortedError, ConnectionError } from '../../errors.ts'
import { NBD_CMD, NBD_CMD_FLAG, NBD_EXTENDED_REQUEST_HEADER, NBD_REQUEST_HEADER } from '../../protocol/constants.ts'
import { encodeRequest } from '../../protocol/request.ts'
import { busyPoll } from '../../transport/busy-poll.ts'
import type { Link } from './link.ts'
import { Reply } from './reply.ts'
import type { Request } from './request.ts'

/**
 * Senders wait for the socket to drain only past this many queued bytes. Payloads are queued
 * by reference and admission already bounds what can be queued; waiting at the stream's own
 * 16 KiB mark would put every request of a busy tick through the send mutex.
 */
const SEND_QUEUE_LIMIT = 8 * 1024 * 1024

export class Sender {
  readonly #link: Link
  readonly #sendMutex = new Mutex()
  #corked = false

  constructor (link: Link) {
    this.#link = link
  }

  /** Sends `req`: undefined once its bytes are queued, or a promise while the socket drains. */
  send (req: Request): Promise<void> | undefined {
    if (this.#sendMutex.isLocked()) return this.#sendLocked(req)
    this.#write(req)
    if (!this.#mustDrain()) return undefined
    return this.#sendMutex.runExclusive(() => this.#drain(req))
  }

  /** NBD_CMD_DISC: no reply; the server finishes what it has, then closes. We stop writing. */
  disconnect (): void {
    const socket = this.#link.conn.socket
    if (socket.destroyed || socket.writableEnded) return
    const header = Buffer.alloc(NBD_EXTENDED_REQUEST_HEADER)
    const extended = this.#link.conn.info.mode === 'extended'
    encodeRequest(header, 0, NBD_CMD.DISC, 0, 0n, 0, extended)
    socket.end(extended ? header : header.subarray(0, NBD_REQUEST_HEADER))
  }

  async #sendLocked (req: Request): Promise<void> {
    const release = await this.#sendMutex.acquire()
    try {
      this.#write(req)
      if (this.#mustDrain()) await this.#drain(req)
    } finally {
      release()
    }
  }

  /** Registers the request on the link and queues its bytes. */
  #write (req: Request): void {
    if (req.abandoned) throw new AbortedError()
    const link = this.#link
    link.checkSendable()
    const info = link.conn.info
    const extended = info.mode === 'extended'
    link.table.register(req)
    req.wire(true)
    req.link = link
    req.reply = link.table.replyFor(req) ?? link.table.keepReply(req, new Reply(req, info.mode, info.contexts, link.counters))
    const header = link.table.headerOf(req)
    let flags = req.flags
    if (extended && req.payload !== undefined) flags |= NBD_CMD_FLAG.PAYLOAD_LEN
    encodeRequest(header, flags, req.type, req.cookie, req.offset, req.length, extended)
    const socket = link.conn.socket
    req.sentAt = performance.now()
    if (!this.#corked) {
      this.#corked = true
      socket.cork()
      process.nextTick(Sender.#uncork, this, socket)
    }
    socket.write(extended ? header : link.table.compactOf(req))
    if (req.payload !== undefined) {
      socket.write(req.payload, req.queuePayload())
    }
    // A reply is due: spin before the loop sleeps, where busy polling is on.
    busyPoll.arm()
  }

  #mustDrain (): boolean {
    const socket = this.#link.conn.socket
    return socket.writableNeedDrain && socket.writableLength > SEND_QUEUE_LIMIT
  }

  async #drain (req: Request): Promise<void> {
    try {
      await waitDrain(this.#link)
    } catch (err) {
      // It will never read its reply: give its cookie back before it is sent elsewhere. The
      // link fails first, so that nothing reads on after a reply header of its (see
      // Receiver.leave).
      const error = this.#link.fail(err)
      this.#link.release(req)
      throw error
    }
  }

  static #uncork (this: void, sender: Sender, socket: Link['conn']['socket']): void {
    sender.#corked = false
    socket.uncork()
  }
}

function waitDrain (link: Link): Promise<void> {
  const socket = link.conn.socket
  if (socket.destroyed) return Promise.reject(new ConnectionError('connection closed while sending'))
  // The write may have finished between our check and now (Node then emits 'drain' in a
  // nextTick, before this listener exists): waiting for an event that already happened would
  // hang until the liveness check fires.
  if (!socket.writableNeedDrain) return Promise.resolve()
  return new Promise((resolve, reject) => {
    const done = (err?: Error): void => {
      socket.off('drain', onDrain)
      socket.off('close', onClose)
      if (err === undefined) resolve()
      else reject(err)
    }
    const onDrain = (): void => { done() }
    const onClose = (): void => { done(link.conn.reader.error ?? new ConnectionError('connection closed while sending')) }
    socket.once('drain', onDrain)
    socket.once('close', onClose)
  })
}
