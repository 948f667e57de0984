/**
 * A pull reader over a socket: the only code that listens for incoming bytes. Whoever owns the
 * read side (the handshake, then the request holding the receive mutex, then the request that
 * owns a reply's payload) asks for exactly the bytes it needs; nothing else reads.
 *
 *        socket 'data'                       take(n) / readInto(sink, at, n)
 *   ─────────────────────►  [chunk][chunk][chu…  ─────────────────────────────►  owner
 *                            ^head                 payloads go straight into the owner's
 *                                                  buffer; a header within one chunk is a
 *                                                  zero-copy view
 *
 * Flow control: the socket flows only while a read is pending, or while the owner expects
 * replies (requests in flight) and less than HIGH_WATER bytes wait here. So nothing reads the
 * socket while nothing is in flight, and a flood of unrequested bytes cannot grow memory.
 *
 * At most one read is pending at a time: the engine's locking guarantees a single owner.
 *
 * Sockets opened by socketOpener read into reusable buffers (see read-hook.ts); then buffered
 * chunks may be views of such a buffer, and a view returned by take()/tryTake() must be used
 * before the caller yields to the event loop (parsing it in a promise continuation is fine).
 *
 * Exact headers (`exactHeaders`, set by the owner while large READs are in flight): a read into
 * those buffers then asks the socket for no more than the owner is about to need, so that a
 * payload that follows is not pulled into a pool buffer (to be copied out) but read by the
 * kernel straight into its destination, as QEMU and libnbd do:
 *
 *   pending            without                     with exactHeaders = H (16, 28 or 40)
 *   none, fill, take   a whole pool buffer         max(H, what the fill or take lacks)
 *   into (payload)     lent when ≥ LEND_MIN        lent when the payload is ≥ LEND_MIN, however
 *                      remain, else a pool buffer  little of it remains; else remaining + H
 *
 * H is a header and what follows it before data (a structured chunk's 8-byte offset): the
 * header read is decided before the header is parsed, so the read after it is a pool read of
 * H too, and the first few bytes of a payload (at most H) are copied; the rest is lent. Bytes
 * of a following small reply read along with them are buffered and consumed first. Without
 * large READs in flight, whole pool buffers batch many small replies per read().
 */
import type { Duplex } from 'node:stream'
import { ConnectionError, socketError } from '../errors.ts'
import { ReadHook, type PooledBuffer } from './read-hook.ts'

/**
 * Where payload bytes go. `dest` becomes null when the caller gave up: bytes are then dropped.
 * While the socket may read straight into `dest`, the reader sets `revoke`: call it before
 * dropping or reusing `dest`.
 */
export interface PayloadSink {
  dest: Buffer | null
  revoke?: (() => void) | null
}

const HIGH_WATER = 1024 * 1024
/**
 * The rest of a payload is read straight into its destination only when at least this much is
 * still to come: a lent view ends the read at the payload's end, so the reply header that
 * follows costs one more read(), which pays only for large payloads. (With exactHeaders, that
 * read is paid anyway: a payload of this size is lent to its end.)
 */
export const LEND_MIN = 64 * 1024

type Pending =
  | { kind: 'take', need: number, resolve: (buf: Buffer) => void, reject: (err: Error) => void, what: string }
  | { kind: 'fill', need: number, resolve: () => void, reject: (err: Error) => void, what: string }
  | { kind: 'into', sink: PayloadSink, at: number, remaining: number, total: number, resolve: () => void, reject: (err: Error) => void, what: string }


export class SocketReader {
  readonly #socket: Duplex
  #chunks: Buffer[] = []
  #head = 0
  #buffered = 0
  #pending: Pending | null = null
  #error: Error | null = null
  #flowing = false
  #expecting = false
  /** Bytes received in total; the stats report it and stall detection watches it move. */
  bytesRead = 0
  /**
   * Bytes copied in user space out of the socket's buffers (payloads copied into place,
   * headers and payloads copied into buffers of their own); what the kernel read straight into
   * a lent destination is not among them.
   */
  bytesCopied = 0
  /** bytesCopied summed over every reader of the process (for tests and profiles). */
  static totalBytesCopied = 0

  readonly #onData = (chunk: Buffer): void => { this.#receive(chunk, null) }
  readonly #onEnd = (): void => { this.#latch(new ConnectionError('server closed the connection')) }
  readonly #onError = (err: Error): void => { this.#latch(socketError(err)) }

  readonly #onClose = (): void => { this.#latch(new ConnectionError('connection closed')) }
  readonly #hook: ReadHook | undefined
  /** For each chunk, the pool buffer it is a view of (null for chunks we own). */
  #sources: Array<PooledBuffer | null> = []
  /** The sink whose destination the socket may be reading into. */
  #lentTo: PayloadSink | null = null
  readonly #revokeFn = (): void => { this.#revoke() }
  /** Bytes a read for a header may take (see exactHeaders); 0: whole pool buffers. */
  #exact = 0

  constructor (socket: Duplex) {
    this.#socket = socket
    socket.pause()
    this.#hook = ReadHook.for(socket)
    if (this.#hook === undefined) {
      socket.on('data', this.#onData)
    } else {
      const early = this.#hook.attach({
        onBytes: (view, source) => { this.#receive(view, source) },
        onDirect: (n) => { this.#receiveDirect(n) },
        lend: () => this.#lend(),
        readSize: () => this.#readSize()
      })
      for (const chunk of early) this.#receive(chunk, null)
    }
    socket.on('end', this.#onEnd)
    socket.on('error', this.#onError)
    socket.on('close', this.#onClose)
  }

  get buffered (): number {
    return this.#buffered
  }

  /** The error that ended the stream, if it has ended. */
  get error (): Error | null {
    return this.#error
  }

  get exactHeaders (): number {
    return this.#exact
  }

  /**
   * While large payloads are expected (READs of LEND_MIN bytes or more in flight), the owner
   * sets this to the bytes of a reply header and what follows it before data: reads for a
   * header take no more, and payloads are read straight into their destinations (see above).
   * 0 (the default) turns it off: whole pool buffers, which batch small replies. Sockets
   * without a read hook (TLS) ignore it.
   */
  set exactHeaders (bytes: number) {
    const was = this.#exact
    this.#exact = bytes > 0 ? bytes : 0
    // The socket may hold a whole pool buffer for its next read: the next header would bring
    // much of its payload with it.
    if (was === 0 && this.#exact > 0) this.#hook?.refresh()
  }

  /** The owner expects bytes (requests are in flight): keep reading ahead, up to HIGH_WATER. */
  expect (on: boolean): void {
    this.#expecting = on
    this.#updateFlow()
  }

  /** Takes `n` bytes if they are already here, without a promise; otherwise undefined. */
  tryTake (n: number): Buffer | undefined {
    return this.#buffered >= n ? this.#takeNow(n) : undefined
  }

  /**
   * If `n` bytes are here, consumes them and returns `parse(buf, at)` of them, read in place
   * where they lie in one chunk (no view, no copy: reply headers), else from a scratch copy;
   * otherwise undefined. `parse` must not keep `buf`.
   */
  tryParse<T> (n: number, parse: (buf: Buffer, at: number) => T): T | undefined {
    if (this.#buffered < n) return undefined
    const first = this.#chunks[0]!
    if (first.length - this.#head >= n) {
      const at = this.#head
      // Parsed before consuming: a pooled chunk stays ours until then.
      const value = parse(first, at)
      this.#consume(n)
      return value
    }
    return parse(this.#takeNow(n), 0)
  }

  /**
   * Resolves with exactly `n` bytes. `what` names them in the error if the stream ends first.
   * They are the caller's own (a copy): whoever awaits them may look at them after the socket
   * has read again, when a view of a pool buffer could already hold other bytes.
   */
  take (n: number, what: string): Promise<Buffer> {
    if (this.#buffered >= n) return Promise.resolve(this.#takeOwned(n))
    if (this.#error !== null) return Promise.reject(this.#endedError(what, this.#buffered, n))
    this.#assertIdle()
    return new Promise<Buffer>((resolve, reject) => {
      this.#pending = { kind: 'take', need: n, resolve, reject, what }
      this.#updateFlow()
    })
  }

  /** Resolves once at least `n` bytes are buffered, without consuming them. */
  fill (n: number, what: string): Promise<void> {
    if (this.#buffered >= n) return Promise.resolve()
    if (this.#error !== null) return Promise.reject(this.#endedError(what, this.#buffered, n))
    this.#assertIdle()
    return new Promise<void>((resolve, reject) => {
      this.#pending = { kind: 'fill', need: n, resolve, reject, what }
      this.#updateFlow()
    })
  }

  /** The next four bytes as a big-endian u32, not consumed. At least four must be buffered. */
  peekUInt32BE (): number {
    const first = this.#chunks[0]!
    if (first.length - this.#head >= 4) return first.readUInt32BE(this.#head)
    let value = 0
    let i = 0
    for (const chunk of this.#chunks) {
      for (let at = chunk === first ? this.#head : 0; at < chunk.length && i < 4; at++, i++) {
        value = value * 256 + chunk[at]!
      }
      if (i === 4) break
    }
    return value
  }

  /**
   * Copies the next `n` bytes into `sink.dest` at `at`, straight from the socket's buffers.
   * Returns undefined when they were already here (no promise on the fast path).
   */
  readInto (sink: PayloadSink, at: number, n: number, what: string): Promise<void> | undefined {
    const copied = this.#copyOut(sink, at, n)
    if (copied === n) return undefined
    if (this.#error !== null) return Promise.reject(this.#endedError(what, copied, n))
    this.#assertIdle()
    return new Promise<void>((resolve, reject) => {
      this.#pending = { kind: 'into', sink, at: at + copied, remaining: n - copied, total: n, resolve, reject, what }
      this.#updateFlow()
    })
  }

  /**
   * The owner declares the stream dead (protocol violation, timeout, close): every pending and
   * later read fails with `err`, and whatever was buffered is dropped.
   */
  fail (err: Error): void {
    this.#revoke()
    this.#dropChunks()
    this.#head = 0
    this.#buffered = 0
    this.#error = err
    const pending = this.#pending
    this.#pending = null
    pending?.reject(err)
    this.#updateFlow()
  }

  /**
   * Stops reading and hands back whatever was buffered (for STARTTLS, where any byte after
   * the ACK would be plaintext injected ahead of the TLS handshake).
   */
  detach (): Buffer {
    this.#revoke()
    this.#hook?.detach()
    this.#socket.off('data', this.#onData)
    this.#socket.off('end', this.#onEnd)
    this.#socket.off('error', this.#onError)
    this.#socket.off('close', this.#onClose)
    this.#socket.pause()
    const rest = this.#buffered === 0 ? Buffer.alloc(0) : Buffer.from(this.#takeNow(this.#buffered))
    this.#copied(rest.length)
    this.#dropChunks()
    this.#error = new ConnectionError('reader detached')
    return rest
  }

  #dropChunks (): void {
    for (const source of this.#sources) if (source !== null) source.refs--
    this.#chunks = []
    this.#sources = []
  }

  #assertIdle (): void {
    if (this.#pending !== null) throw new Error('internal: two reads pending on one socket')
  }

  #endedError (what: string, got: number, want: number): Error {
    const err = this.#error!
    // Nothing of it had come (the stream ended between messages): the error says it all.
    if (!(err instanceof ConnectionError) || got === 0) return err
    return new ConnectionError(`${err.message} while reading ${what} (${got} of ${want} bytes)`, { cause: err.cause })
  }

  /** A view of the pending payload's destination for the socket to read into, if worth it. */
  #lend (): Buffer | undefined {
    const p = this.#pending
    if (p === null || p.kind !== 'into' || this.#buffered !== 0) return undefined
    if ((this.#exact > 0 ? p.total : p.remaining) < LEND_MIN) return undefined
    const dest = p.sink.dest
    if (dest === null || this.#hook?.canLend !== true) return undefined
    this.#lentTo = p.sink
    p.sink.revoke = this.#revokeFn
    return dest.subarray(p.at, p.at + p.remaining)
  }

  /** The most bytes the next read into a pool buffer should take (see exactHeaders). */
  #readSize (): number {
    const exact = this.#exact
    if (exact === 0) return Infinity
    const p = this.#pending
    if (p === null) return exact
    if (p.kind === 'into') return p.remaining + exact
    return Math.max(exact, p.need - this.#buffered)
  }

  /** Bytes the socket read straight into the lent destination. */
  #receiveDirect (n: number): void {
    this.bytesRead += n
    const p = this.#pending
    this.#lentTo = null
    if (p === null || p.kind !== 'into' || n > p.remaining) {
      // Lending follows the pending read and is revoked with it, so this cannot happen.
      this.fail(new ConnectionError('internal: bytes read into a destination nobody waits for'))
      return
    }
    p.sink.revoke = null
    p.at += n
    p.remaining -= n
    if (p.remaining === 0) {
      this.#pending = null
      p.resolve()
    }
    this.#updateFlow()
  }

  /** Takes a lent destination back from the socket, before its owner drops it. */
  #revoke (): void {
    const sink = this.#lentTo
    if (sink === null) return
    this.#lentTo = null
    sink.revoke = null
    this.#hook?.reclaim()
  }

  #receive (chunk: Buffer, source: PooledBuffer | null): void {
    this.bytesRead += chunk.length
    const p = this.#pending
    if (p !== null && p.kind === 'into' && this.#buffered === 0) {
      // The common case for payloads: copy from the socket's buffer straight into place.
      const n = Math.min(p.remaining, chunk.length)
      const dest = p.sink.dest
      if (dest !== null) {
        dest.set(n === chunk.length ? chunk : chunk.subarray(0, n), p.at)
        this.#copied(n)
      }
      p.at += n
      p.remaining -= n
      if (n < chunk.length) this.#push(chunk.subarray(n), source)
      if (p.remaining === 0) {
        this.#pending = null
        p.resolve()
      }
    } else {
      this.#push(chunk, source)
      if (p !== null) this.#satisfy(p)
    }
    this.#updateFlow()
  }

  #satisfy (p: Pending): void {
    if (p.kind === 'fill') {
      if (this.#buffered >= p.need) {
        this.#pending = null
        p.resolve()
      }
      return
    }
    if (p.kind === 'take') {
      if (this.#buffered >= p.need) {
        this.#pending = null
        p.resolve(this.#takeOwned(p.need))
      }
      return
    }
    const n = this.#copyOut(p.sink, p.at, p.remaining)
    p.at += n
    p.remaining -= n
    if (p.remaining === 0) {
      this.#pending = null
      p.resolve()
    }
  }

  #push (chunk: Buffer, source: PooledBuffer | null): void {
    this.#chunks.push(chunk)
    this.#sources.push(source)
    this.#buffered += chunk.length
    if (source !== null) source.refs++
  }

  /** Copies up to `n` buffered bytes into the sink; returns how many. */
  #copyOut (sink: PayloadSink, at: number, n: number): number {
    let done = 0
    while (done < n && this.#buffered > 0) {
      const chunk = this.#chunks[0]!
      const size = Math.min(n - done, chunk.length - this.#head)
      const dest = sink.dest
      if (dest !== null) {
        dest.set(chunk.subarray(this.#head, this.#head + size), at + done)
        this.#copied(size)
      }
      done += size
      this.#consume(size)
    }
    return done
  }

  #takeNow (n: number): Buffer {
    const first = this.#chunks[0]!
    if (first.length - this.#head >= n) {
      const view = first.subarray(this.#head, this.#head + n)
      this.#consume(n)
      return view
    }
    const out = Buffer.allocUnsafe(n)
    this.#copyOut({ dest: out }, 0, n)
    return out
  }

  /** `n` bytes in a buffer of their own (a view only of a chunk that is not pooled). */
  #takeOwned (n: number): Buffer {
    const source = this.#sources[0]
    // Bytes from several chunks are gathered into a new buffer already.
    const within = this.#chunks[0]!.length - this.#head >= n
    const bytes = this.#takeNow(n)
    if (!within || source === null || source === undefined) return bytes
    this.#copied(n)
    return Buffer.from(bytes)
  }

  #copied (n: number): void {
    this.bytesCopied += n
    SocketReader.totalBytesCopied += n
  }

  #consume (n: number): void {
    this.#head += n
    this.#buffered -= n
    if (this.#head === this.#chunks[0]!.length) {
      this.#chunks.shift()
      const source = this.#sources.shift()
      if (source != null) source.refs--
      this.#head = 0
    }
  }

  #latch (err: Error): void {
    if (this.#error !== null) return
    this.#revoke()
    this.#error = err
    const p = this.#pending
    if (p === null) return
    // Buffered bytes stay readable (a last reply can precede EOF); only an unmet read fails.
    this.#pending = null
    const got = p.kind === 'into' ? p.total - p.remaining : this.#buffered
    p.reject(this.#endedError(p.what, got, p.kind === 'into' ? p.total : p.need))
  }

  #updateFlow (): void {
    const want = this.#error === null &&
      (this.#pending !== null || (this.#expecting && this.#buffered < HIGH_WATER))
    if (want === this.#flowing) return
    this.#flowing = want
    if (want) this.#socket.resume()
    else this.#socket.pause()
  }
}
