/**
 * A scripted NBD server for what no real server sends: malformed or hostile replies, and
 * extended headers (none of the servers installed here speaks them). Each connection runs a
 * script against a FakePeer, which reads and writes raw protocol bytes.
 */
import net from 'node:net'
import path from 'node:path'
import type { Duplex } from 'node:stream'
import { TLSSocket, type TlsOptions } from 'node:tls'
import {
  NBD_CMD, NBD_EXTENDED_REPLY_MAGIC, NBD_EXTENDED_REQUEST_MAGIC, NBD_FLAG, NBD_INFO, NBD_INIT_MAGIC, NBD_OPT,
  NBD_OPTS_MAGIC, NBD_REP, NBD_REP_MAGIC, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE, NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC, NBD_STRUCTURED_REPLY_MAGIC
} from '../../src/protocol/constants.ts'
import { tempDir, unixUri } from './servers.ts'

export interface OptionRequest {
  readonly option: number
  readonly data: Buffer
}

export interface WireRequest {
  readonly flags: number
  readonly type: number
  readonly cookie: bigint
  readonly offset: bigint
  readonly length: bigint
  readonly payload: Buffer | undefined
}

export interface NegotiateOptions {
  readonly size?: bigint
  readonly flags?: number
  /** Answer STRUCTURED_REPLY with ACK. @default true */
  readonly structured?: boolean
  /** Answer EXTENDED_HEADERS with ACK. @default false */
  readonly extended?: boolean
  /** Meta contexts offered, name → id. @default { 'base:allocation': 1 } */
  readonly contexts?: Readonly<Record<string, number>>
  readonly blockSize?: readonly [number, number, number]
  /** The greeting was already exchanged (negotiation goes on after STARTTLS). */
  readonly skipGreeting?: boolean
  /** Handle (or break) any option before the default answer; return true when handled. */
  readonly onOption?: (peer: FakePeer, request: OptionRequest) => Promise<boolean>
}

export const DEFAULT_FLAGS = NBD_FLAG.HAS_FLAGS | NBD_FLAG.SEND_FLUSH | NBD_FLAG.SEND_FUA | NBD_FLAG.SEND_TRIM |
  NBD_FLAG.SEND_WRITE_ZEROES | NBD_FLAG.SEND_DF | NBD_FLAG.CAN_MULTI_CONN | NBD_FLAG.SEND_CACHE | NBD_FLAG.SEND_FAST_ZERO

export class FakePeer {
  readonly socket: net.Socket
  #buffer = Buffer.alloc(0)
  #waiter: (() => void) | null = null
  #ended = false
  extended = false
  /** Every byte the client sent, in order. */
  readonly received: Buffer[] = []

  /** Where replies go: the socket, or the TLS session over it after startTls(). */
  #io: Duplex
  /** The TLS session, once startTls() succeeded. */
  tls: TLSSocket | undefined

  constructor (socket: net.Socket) {
    this.socket = socket
    this.#io = socket
    this.#listen(socket)
  }

  #listen (stream: Duplex): void {
    stream.on('data', (d: Buffer) => {
      this.received.push(d)
      this.#buffer = Buffer.concat([this.#buffer, d])
      this.#waiter?.()
    })
    stream.on('end', () => { this.#ended = true; this.#waiter?.() })
    stream.on('close', () => { this.#ended = true; this.#waiter?.() })
    stream.on('error', () => {})
  }

  /** The server side of STARTTLS, after the ACK: TLS over this connection from now on. */
  async startTls (options: TlsOptions): Promise<void> {
    this.socket.removeAllListeners('data')
    this.socket.removeAllListeners('end')
    this.socket.removeAllListeners('close')
    const secure = new TLSSocket(this.socket, { isServer: true, ...options })
    this.#listen(secure)
    this.#io = secure
    this.tls = secure
    await new Promise<void>((resolve, reject) => {
      secure.once('secure', resolve)
      secure.once('error', reject)
      secure.once('close', () => { reject(new Error('client closed during the TLS handshake')) })
    })
  }

  async read (n: number): Promise<Buffer> {
    while (this.#buffer.length < n) {
      if (this.#ended) throw new Error(`client closed (wanted ${n} bytes, have ${this.#buffer.length})`)
      await new Promise<void>((resolve) => { this.#waiter = resolve })
      this.#waiter = null
    }
    const out = this.#buffer.subarray(0, n)
    this.#buffer = this.#buffer.subarray(n)
    return out
  }

  /** True once bytes from the client are waiting, false if none arrive within `ms`. */
  async hasData (ms: number): Promise<boolean> {
    const deadline = Date.now() + ms
    while (this.#buffer.length === 0 && !this.#ended) {
      const left = deadline - Date.now()
      if (left <= 0) return false
      let timer: NodeJS.Timeout | undefined
      await new Promise<void>((resolve) => {
        this.#waiter = resolve
        timer = setTimeout(resolve, left)
      })
      clearTimeout(timer)
      this.#waiter = null
    }
    return this.#buffer.length > 0
  }

  /** Resolves when the client closes its side. */
  async closed (): Promise<void> {
    while (!this.#ended) {
      await new Promise<void>((resolve) => { this.#waiter = resolve })
      this.#waiter = null
    }
  }

  write (...parts: Buffer[]): void {
    this.#io.write(Buffer.concat(parts))
  }

  end (): void { this.#io.end() }
  destroy (): void { this.#io.destroy(); this.socket.destroy() }

  async greet (flags = 3): Promise<number> {
    const g = Buffer.alloc(18)
    g.writeBigUInt64BE(NBD_INIT_MAGIC, 0)
    g.writeBigUInt64BE(NBD_OPTS_MAGIC, 8)
    g.writeUInt16BE(flags, 16)
    this.write(g)
    return (await this.read(4)).readUInt32BE(0)
  }

  async readOption (): Promise<OptionRequest> {
    const h = await this.read(16)
    if (h.readBigUInt64BE(0) !== NBD_OPTS_MAGIC) throw new Error('bad option magic from client')
    const option = h.readUInt32BE(8)
    const data = await this.read(h.readUInt32BE(12))
    return { option, data }
  }

  replyOption (option: number, type: number, data: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.alloc(20)
    h.writeBigUInt64BE(NBD_REP_MAGIC, 0)
    h.writeUInt32BE(option, 8)
    h.writeUInt32BE(type, 12)
    h.writeUInt32BE(data.length, 16)
    this.write(h, data)
  }

  static infoExport (size: bigint, flags: number): Buffer {
    const b = Buffer.alloc(12)
    b.writeUInt16BE(NBD_INFO.EXPORT, 0)
    b.writeBigUInt64BE(size, 2)
    b.writeUInt16BE(flags, 10)
    return b
  }

  static metaContext (id: number, name: string): Buffer {
    const n = Buffer.from(name)
    const b = Buffer.alloc(4 + n.length)
    b.writeUInt32BE(id, 0)
    n.copy(b, 4)
    return b
  }

  /** Answers options the way a well-behaved server does, until GO or EXPORT_NAME. */
  async negotiate (options: NegotiateOptions = {}): Promise<void> {
    const size = options.size ?? 1024n * 1024n
    const flags = options.flags ?? DEFAULT_FLAGS
    const contexts = options.contexts ?? { 'base:allocation': 1 }
    if (options.skipGreeting !== true) await this.greet()
    for (;;) {
      const req = await this.readOption()
      if (options.onOption !== undefined && await options.onOption(this, req)) {
        if (req.option === NBD_OPT.GO) return
        continue
      }
      switch (req.option) {
        case NBD_OPT.EXTENDED_HEADERS:
          if (options.extended === true) {
            this.extended = true
            this.replyOption(req.option, NBD_REP.ACK)
          } else {
            this.replyOption(req.option, NBD_REP.ERR_UNSUP)
          }
          break
        case NBD_OPT.STRUCTURED_REPLY:
          this.replyOption(req.option, options.structured === false ? NBD_REP.ERR_UNSUP : NBD_REP.ACK)
          break
        case NBD_OPT.SET_META_CONTEXT:
        case NBD_OPT.LIST_META_CONTEXT: {
          const queries = parseQueries(req.data)
          for (const q of queries) {
            const id = contexts[q]
            if (id !== undefined) this.replyOption(req.option, NBD_REP.META_CONTEXT, FakePeer.metaContext(req.option === NBD_OPT.LIST_META_CONTEXT ? 0 : id, q))
          }
          if (queries.length === 0 && req.option === NBD_OPT.LIST_META_CONTEXT) {
            for (const name of Object.keys(contexts)) this.replyOption(req.option, NBD_REP.META_CONTEXT, FakePeer.metaContext(0, name))
          }
          this.replyOption(req.option, NBD_REP.ACK)
          break
        }
        case NBD_OPT.GO:
        case NBD_OPT.INFO:
          if (options.blockSize !== undefined) {
            const b = Buffer.alloc(14)
            b.writeUInt16BE(NBD_INFO.BLOCK_SIZE, 0)
            b.writeUInt32BE(options.blockSize[0], 2)
            b.writeUInt32BE(options.blockSize[1], 6)
            b.writeUInt32BE(options.blockSize[2], 10)
            this.replyOption(req.option, NBD_REP.INFO, b)
          }
          this.replyOption(req.option, NBD_REP.INFO, FakePeer.infoExport(size, flags))
          this.replyOption(req.option, NBD_REP.ACK)
          if (req.option === NBD_OPT.GO) return
          break
        case NBD_OPT.ABORT:
          this.replyOption(req.option, NBD_REP.ACK)
          this.end()
          return
        default:
          this.replyOption(req.option, NBD_REP.ERR_UNSUP)
      }
    }
  }

  async readRequest (): Promise<WireRequest> {
    const magic = (await this.read(4)).readUInt32BE(0)
    const extended = magic === NBD_EXTENDED_REQUEST_MAGIC
    if (!extended && magic !== NBD_REQUEST_MAGIC) throw new Error(`bad request magic ${magic.toString(16)}`)
    const h = await this.read(extended ? 28 : 24)
    const flags = h.readUInt16BE(0)
    const type = h.readUInt16BE(2)
    const cookie = h.readBigUInt64BE(4)
    const offset = h.readBigUInt64BE(12)
    const length = extended ? h.readBigUInt64BE(20) : BigInt(h.readUInt32BE(20))
    const payload = type === NBD_CMD.WRITE ? await this.read(Number(length)) : undefined
    return { flags, type, cookie, offset, length, payload }
  }

  simpleReply (cookie: bigint, error = 0, data?: Buffer): void {
    const h = Buffer.alloc(16)
    h.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0)
    h.writeUInt32BE(error, 4)
    h.writeBigUInt64BE(cookie, 8)
    this.write(h, data ?? Buffer.alloc(0))
  }

  /** A structured chunk (or an extended one after EXTENDED_HEADERS, with `offset`). */
  chunk (cookie: bigint, flags: number, type: number, payload: Buffer = Buffer.alloc(0), offset = 0n): void {
    if (this.extended) {
      const h = Buffer.alloc(32)
      h.writeUInt32BE(NBD_EXTENDED_REPLY_MAGIC, 0)
      h.writeUInt16BE(flags, 4)
      h.writeUInt16BE(type, 6)
      h.writeBigUInt64BE(cookie, 8)
      h.writeBigUInt64BE(offset, 16)
      h.writeBigUInt64BE(BigInt(payload.length), 24)
      this.write(h, payload)
      return
    }
    const h = Buffer.alloc(20)
    h.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0)
    h.writeUInt16BE(flags, 4)
    h.writeUInt16BE(type, 6)
    h.writeBigUInt64BE(cookie, 8)
    h.writeUInt32BE(payload.length, 16)
    this.write(h, payload)
  }

  offsetData (req: WireRequest, offset: bigint, data: Buffer, done = true): void {
    const p = Buffer.alloc(8 + data.length)
    p.writeBigUInt64BE(offset, 0)
    data.copy(p, 8)
    this.chunk(req.cookie, done ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE.OFFSET_DATA, p, req.offset)
  }

  offsetHole (req: WireRequest, offset: bigint, size: number, done = true): void {
    const p = Buffer.alloc(12)
    p.writeBigUInt64BE(offset, 0)
    p.writeUInt32BE(size, 8)
    this.chunk(req.cookie, done ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE.OFFSET_HOLE, p, req.offset)
  }

  errorChunk (req: WireRequest, error: number, message = '', done = true): void {
    const m = Buffer.from(message)
    const p = Buffer.alloc(6 + m.length)
    p.writeUInt32BE(error, 0)
    p.writeUInt16BE(m.length, 4)
    m.copy(p, 6)
    this.chunk(req.cookie, done ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE.ERROR, p, req.offset)
  }

  blockStatus (req: WireRequest, contextId: number, extents: ReadonlyArray<readonly [number, number]>, done = true): void {
    if (this.extended) {
      const p = Buffer.alloc(8 + 16 * extents.length)
      p.writeUInt32BE(contextId, 0)
      p.writeUInt32BE(extents.length, 4)
      extents.forEach(([length, flags], i) => {
        p.writeBigUInt64BE(BigInt(length), 8 + 16 * i)
        p.writeBigUInt64BE(BigInt(flags), 16 + 16 * i)
      })
      this.chunk(req.cookie, done ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE.BLOCK_STATUS_EXT, p, req.offset)
      return
    }
    const p = Buffer.alloc(4 + 8 * extents.length)
    p.writeUInt32BE(contextId, 0)
    extents.forEach(([length, flags], i) => {
      p.writeUInt32BE(length, 4 + 8 * i)
      p.writeUInt32BE(flags, 8 + 8 * i)
    })
    this.chunk(req.cookie, done ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE.BLOCK_STATUS, p, req.offset)
  }
}

function parseQueries (data: Buffer): string[] {
  const nameLength = data.readUInt32BE(0)
  let at = 4 + nameLength
  const count = data.readUInt32BE(at)
  at += 4
  const out: string[] = []
  for (let i = 0; i < count; i++) {
    const n = data.readUInt32BE(at)
    out.push(data.subarray(at + 4, at + 4 + n).toString())
    at += 4 + n
  }
  return out
}

export class FakeServer {
  readonly socket: string
  readonly peers: FakePeer[] = []
  /** Errors thrown by scripts (a script that fails is a test bug, reported by the test). */
  readonly errors: unknown[] = []
  readonly #server: net.Server

  private constructor (socket: string, server: net.Server) {
    this.socket = socket
    this.#server = server
  }

  static async start (script: (peer: FakePeer, index: number) => Promise<void>): Promise<FakeServer> {
    const socket = path.join(tempDir('nbdts-fake-'), 'fake.sock')
    let fake: FakeServer | undefined
    const server = net.createServer((s) => {
      const peer = new FakePeer(s)
      fake!.peers.push(peer)
      script(peer, fake!.peers.length - 1).catch((err: unknown) => {
        // A client that hangs up mid-script is what many tests provoke; anything else is a bug.
        if (!(err instanceof Error && err.message.startsWith('client closed'))) fake!.errors.push(err)
        s.destroy()
      })
    })
    await new Promise<void>((resolve) => server.listen(socket, resolve))
    fake = new FakeServer(socket, server)
    return fake
  }

  uri (exportName = ''): string {
    return unixUri(this.socket, exportName)
  }

  async close (): Promise<void> {
    for (const p of this.peers) p.destroy()
    await new Promise<void>((resolve) => { this.#server.close(() => { resolve() }) })
  }
}
