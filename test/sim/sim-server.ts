/**
 * A simulated NBD server with a volatile write cache over a durable store, reached through
 * the client's public `open` connector over in-memory streams. It answers nothing on its own:
 * every request waits in its connection's queue until the scheduler serves it (in any order:
 * out-of-order replies), and the scheduler also injects the faults:
 *
 *   crash        the cache is lost, every connection dropped, connects refused until restart
 *   drop         one connection closed by the server (the server itself lives on)
 *   eio          the next write-like requests fail with EIO, changing nothing
 *   hang         one connection stops answering (until a crash drops it)
 *   stall        the next READ reply on a connection stops half-way through its payload
 *   writeback    one cached block reaches the durable store on its own
 *
 * Without multi-conn a FLUSH persists only what its own connection wrote (the spec allows no
 * more): writes acknowledged on a connection that was left stay volatile until written back.
 *
 * Handshake: fixed newstyle, NBD_OPT_GO only (everything else is unsupported), simple replies.
 */
import { Duplex } from 'node:stream'
import { NBD_CMD, NBD_CMD_FLAG, NBD_FLAG, NBD_INFO, NBD_INIT_MAGIC, NBD_OPT, NBD_OPTS_MAGIC, NBD_REP, NBD_REP_MAGIC, NBD_REQUEST_MAGIC, NBD_SIMPLE_REPLY_MAGIC } from '../../src/protocol/constants.ts'

const EIO = 5
const EINVAL = 22

export interface SimRequest {
  readonly type: number
  readonly flags: number
  readonly cookie: bigint
  readonly offset: number
  readonly length: number
  readonly payload: Buffer | undefined
}

export class SimConnection {
  readonly id: number
  readonly server: SimServer
  readonly instance: number
  readonly client: Duplex
  readonly pending: SimRequest[] = []
  hung = false
  stallNext = false
  /** Stopped mid-reply: the stream is out of step for good (nothing may be sent on it again). */
  stalled = false
  closed = false
  #phase: 'flags' | 'options' | 'transmission' = 'flags'
  #buffer: Buffer = Buffer.alloc(0)
  #disc = false

  constructor (id: number, server: SimServer) {
    this.id = id
    this.server = server
    this.instance = server.instance
    const self = this
    this.client = new Duplex({
      read () {},
      write (chunk: Buffer, _encoding, callback) {
        if (!self.closed) self.#receive(chunk)
        callback()
      },
      final (callback) {
        callback()
        self.close()
      },
      destroy (err, callback) {
        self.closed = true
        self.pending.length = 0
        callback(err)
      }
    })
    const hello = Buffer.alloc(18)
    hello.writeBigUInt64BE(NBD_INIT_MAGIC, 0)
    hello.writeBigUInt64BE(NBD_OPTS_MAGIC, 8)
    hello.writeUInt16BE(3, 16) // FIXED_NEWSTYLE | NO_ZEROES
    this.#send(hello)
  }

  /** The server closes the connection (a drop, a crash, or after NBD_CMD_DISC). */
  close (): void {
    if (this.closed) return
    this.closed = true
    this.pending.length = 0
    this.client.push(null)
    this.client.destroy()
  }

  #send (buf: Buffer): void {
    if (!this.closed) this.client.push(buf)
  }

  #receive (chunk: Buffer): void {
    this.#buffer = this.#buffer.length === 0 ? chunk : Buffer.concat([this.#buffer, chunk])
    for (;;) {
      const b = this.#buffer
      if (this.#phase === 'flags') {
        if (b.length < 4) return
        this.#buffer = b.subarray(4)
        this.#phase = 'options'
      } else if (this.#phase === 'options') {
        if (b.length < 16) return
        const length = b.readUInt32BE(12)
        if (b.length < 16 + length) return
        const option = b.readUInt32BE(8)
        this.#buffer = b.subarray(16 + length)
        this.#option(option)
      } else {
        if (b.length < 28) return
        if (b.readUInt32BE(0) !== NBD_REQUEST_MAGIC) {
          this.close()
          return
        }
        const type = b.readUInt16BE(6)
        const length = b.readUInt32BE(24)
        const hasPayload = type === NBD_CMD.WRITE
        if (hasPayload && b.length < 28 + length) return
        const request: SimRequest = {
          flags: b.readUInt16BE(4),
          type,
          cookie: b.readBigUInt64BE(8),
          offset: Number(b.readBigUInt64BE(16)),
          length,
          payload: hasPayload ? Buffer.from(b.subarray(28, 28 + length)) : undefined
        }
        this.#buffer = b.subarray(hasPayload ? 28 + length : 28)
        if (type === NBD_CMD.DISC) {
          this.#disc = true
          if (this.pending.length === 0) this.close()
          return
        }
        this.pending.push(request)
      }
      if (this.closed) return
    }
  }

  #option (option: number): void {
    if (option === NBD_OPT.GO) {
      const info = Buffer.alloc(12)
      info.writeUInt16BE(NBD_INFO.EXPORT, 0)
      info.writeBigUInt64BE(BigInt(this.server.size), 2)
      info.writeUInt16BE(this.server.flags, 10)
      this.#optionReply(option, NBD_REP.INFO, info)
      this.#optionReply(option, NBD_REP.ACK, Buffer.alloc(0))
      this.#phase = 'transmission'
      return
    }
    if (option === NBD_OPT.ABORT) {
      this.#optionReply(option, NBD_REP.ACK, Buffer.alloc(0))
      this.close()
      return
    }
    this.#optionReply(option, NBD_REP.ERR_UNSUP, Buffer.alloc(0))
  }

  #optionReply (option: number, type: number, data: Buffer): void {
    const head = Buffer.alloc(20)
    head.writeBigUInt64BE(NBD_REP_MAGIC, 0)
    head.writeUInt32BE(option, 8)
    head.writeUInt32BE(type, 12)
    head.writeUInt32BE(data.length, 16)
    this.#send(Buffer.concat([head, data]))
  }

  /** Serves the pending request at `index` (the scheduler's choice: replies in any order). */
  serve (index: number): void {
    const [req] = this.pending.splice(index, 1)
    if (req === undefined || this.closed) return
    const server = this.server
    let error = 0
    let data: Buffer | undefined
    const writeLike = req.type === NBD_CMD.WRITE || req.type === NBD_CMD.WRITE_ZEROES || req.type === NBD_CMD.TRIM
    if (req.offset + req.length > server.size) error = EINVAL
    else if (writeLike && server.eio > 0) {
      server.eio--
      error = EIO
    } else if (req.type === NBD_CMD.WRITE) server.write(req.offset, req.payload!, (req.flags & NBD_CMD_FLAG.FUA) !== 0, this.id)
    else if (req.type === NBD_CMD.WRITE_ZEROES || req.type === NBD_CMD.TRIM) server.write(req.offset, Buffer.alloc(req.length), (req.flags & NBD_CMD_FLAG.FUA) !== 0, this.id)
    else if (req.type === NBD_CMD.FLUSH) server.flush(this.id)
    else if (req.type === NBD_CMD.READ) data = server.read(req.offset, req.length)
    else error = EINVAL
    const head = Buffer.alloc(16)
    head.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0)
    head.writeUInt32BE(error, 4)
    head.writeBigUInt64BE(req.cookie, 8)
    if (data !== undefined && error === 0) {
      if (this.stallNext) {
        // Half the payload, then nothing more: a server stuck mid-reply.
        this.#send(Buffer.concat([head, data.subarray(0, data.length >> 1)]))
        this.stallNext = false
        this.hung = true
        this.stalled = true
        return
      }
      this.#send(Buffer.concat([head, data]))
    } else {
      this.#send(head)
    }
    if (this.#disc && this.pending.length === 0) this.close()
  }
}

export class SimServer {
  readonly size: number
  readonly flags: number
  readonly blockSize: number
  /** What survives a crash. */
  readonly durable: Buffer
  /** Written but not yet durable, by block index. */
  readonly cache = new Map<number, Buffer>()
  /** Which connections wrote each cached block since it was last written back. */
  readonly owner = new Map<number, Set<number>>()
  readonly multiConn: boolean
  /** Bumped whenever the durable store changes (the checker looks again then). */
  durableVersion = 0
  alive = true
  instance = 1
  /** The next write-like requests that fail with EIO. */
  eio = 0
  readonly connections = new Set<SimConnection>()
  #nextConn = 1

  constructor (blocks: number, blockSize: number, multiConn: boolean) {
    this.blockSize = blockSize
    this.size = blocks * blockSize
    this.durable = Buffer.alloc(this.size)
    this.multiConn = multiConn
    this.flags = NBD_FLAG.HAS_FLAGS | NBD_FLAG.SEND_FLUSH | NBD_FLAG.SEND_FUA | NBD_FLAG.SEND_TRIM | NBD_FLAG.SEND_WRITE_ZEROES |
      (multiConn ? NBD_FLAG.CAN_MULTI_CONN : 0)
  }

  /** The client's connector: a new connection, or ECONNREFUSED while the server is down. */
  accept (): Duplex {
    if (!this.alive) throw Object.assign(new Error('connect ECONNREFUSED (simulated server is down)'), { code: 'ECONNREFUSED' })
    const conn = new SimConnection(this.#nextConn++, this)
    this.connections.add(conn)
    conn.client.once('close', () => { this.connections.delete(conn) })
    return conn.client
  }

  read (offset: number, length: number): Buffer {
    const out = Buffer.alloc(length)
    for (let at = 0; at < length;) {
      const pos = offset + at
      const block = Math.floor(pos / this.blockSize)
      const within = pos - block * this.blockSize
      const n = Math.min(this.blockSize - within, length - at)
      const src = this.cache.get(block) ?? this.durable.subarray(block * this.blockSize, (block + 1) * this.blockSize)
      src.copy(out, at, within, within + n)
      at += n
    }
    return out
  }

  write (offset: number, data: Buffer, fua: boolean, conn: number): void {
    for (let at = 0; at < data.length;) {
      const pos = offset + at
      const block = Math.floor(pos / this.blockSize)
      const within = pos - block * this.blockSize
      const n = Math.min(this.blockSize - within, data.length - at)
      let cached = this.cache.get(block)
      if (cached === undefined) {
        cached = Buffer.from(this.durable.subarray(block * this.blockSize, (block + 1) * this.blockSize))
        this.cache.set(block, cached)
      }
      data.copy(cached, within, at, at + n)
      let writers = this.owner.get(block)
      if (writers === undefined) this.owner.set(block, writers = new Set())
      writers.add(conn)
      if (fua) this.writeback(block)
      at += n
    }
  }

  /** One cached block reaches the durable store. */
  writeback (block: number): void {
    const cached = this.cache.get(block)
    if (cached === undefined) return
    cached.copy(this.durable, block * this.blockSize)
    this.cache.delete(block)
    this.owner.delete(block)
    this.durableVersion++
  }

  /** FLUSH on connection `conn`: everything with multi-conn, else what that connection wrote. */
  flush (conn: number): void {
    for (const block of [...this.cache.keys()]) if (this.multiConn || this.owner.get(block)?.has(conn) === true) this.writeback(block)
  }

  /** Power lost: the cache is gone, every connection with it; connects fail until restart(). */
  crash (): void {
    this.alive = false
    this.cache.clear()
    this.owner.clear()
    this.eio = 0
    for (const conn of [...this.connections]) conn.close()
  }

  restart (): void {
    if (this.alive) return
    this.alive = true
    this.instance++
  }
}
