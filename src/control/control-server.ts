/**
 * The control socket, built like multipathd's rewritten Unix listener (uxlsnr.md): every
 * client is a small state machine, one request at a time, and nothing a client does (or
 * fails to do) can stall the daemon or another client.
 *
 *            frame complete            parsed, changes state         lock granted
 *   RECEIVE ───────────────► PARSE ─────────────────────► WAIT_FOR_LOCK ──────────► WORK
 *      ▲                        │ read-only, help, or an error reply                 │
 *      │                        └──────────────────────────────────────► WORK ────────┤
 *      │          reply flushed                                                      ▼
 *      └──────────────────────────────────────────────────────────────────────────  SEND
 *
 * One deadline per request (monotonic, default 4 s), from its first byte through parsing and
 * the wait for the lock to the start of the handler. When it passes, the server itself replies
 * "fail\ntimeout"; in the middle of a frame it then closes, since the framing is lost. A reply
 * being sent is never cut or restarted. The socket is paused outside RECEIVE, so a client's
 * next request waits in the kernel, and one that never reads its replies holds at most one
 * reply in memory. A hang-up in any state drops the request and its place in the lock queue.
 */
import { chmodSync, mkdirSync, rmSync } from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import type { ConfigLock, LockWaiter } from './config-lock.ts'
import { ControlError } from './errors.ts'
import { FRAME_HEADER, FrameDecoder, MAX_COMMAND, MAX_REPLY, decodeText, encodeFrame } from './frame.ts'
import { isReadOnly, needsLock, parseCommand, type Command } from './grammar.ts'
import { peerCredentialsError, readPeerCredentials, selfTest, type PeerCredentials } from './peer-credentials.ts'

export type ClientState = 'RECEIVE' | 'PARSE' | 'WAIT_FOR_LOCK' | 'WORK' | 'SEND'

export interface ClientInfo {
  readonly id: number
  readonly state: ClientState
  readonly privileged: boolean
  readonly uid: number | undefined
  readonly pid: number | undefined
  readonly connectedMs: number
  readonly requests: number
}

export interface CommandContext {
  readonly client: ClientInfo
}

/** Runs a parsed command; resolves with the reply ("ok" or text), throws for "fail\nREASON". */
export type CommandRunner = (command: Command, context: CommandContext) => Promise<string> | string

export type ControlLog = (level: 'debug' | 'info' | 'warn' | 'error', message: string) => void

export interface ControlServerOptions {
  readonly path: string
  readonly run: CommandRunner
  readonly lock: ConfigLock
  /** The per-request deadline, ms. @default 4000 */
  readonly timeoutMs?: number
  /** Clients connected at once; the excess is refused with a reason. @default 128 */
  readonly maxClients?: number
  readonly log?: ControlLog
  /** How peers are identified; tests inject their own. @default SO_PEERCRED */
  readonly credentials?: (socket: net.Socket) => PeerCredentials | undefined
}

/** Bytes a client may send ahead of its current request before we call it garbage. */
const MAX_PENDING = 64 * 1024

class Session {
  readonly id: number
  readonly socket: net.Socket
  readonly decoder = new FrameDecoder(MAX_COMMAND)
  readonly privileged: boolean
  readonly credentials: PeerCredentials | undefined
  readonly connectedAt = performance.now()
  state: ClientState = 'RECEIVE'
  deadline: NodeJS.Timeout | null = null
  waiter: LockWaiter | null = null
  closed = false
  /** The client half-closed: answer what it asked, then close. */
  ended = false
  requests = 0

  constructor (id: number, socket: net.Socket, credentials: PeerCredentials | undefined, privileged: boolean) {
    this.id = id
    this.socket = socket
    this.credentials = credentials
    this.privileged = privileged
  }

  info (): ClientInfo {
    return {
      id: this.id,
      state: this.state,
      privileged: this.privileged,
      uid: this.credentials?.uid,
      pid: this.credentials?.pid,
      connectedMs: Math.round(performance.now() - this.connectedAt),
      requests: this.requests
    }
  }
}

export class ControlServer {
  readonly path: string
  /** The per-request deadline, ms; changeable at run time. */
  timeoutMs: number
  /** False when the start-up self-test could not read our own credentials: nobody is root. */
  credentialsTrusted = false
  readonly #server: net.Server
  readonly #options: ControlServerOptions
  readonly #sessions = new Map<number, Session>()
  readonly #log: ControlLog
  #nextId = 1
  #selfTest: ((credentials: PeerCredentials | undefined) => void) | null = null

  private constructor (options: ControlServerOptions) {
    this.path = options.path
    this.timeoutMs = options.timeoutMs ?? 4000
    this.#options = options
    this.#log = options.log ?? (() => {})
    // Half-open: a one-shot client may shut down its writing side and still get its reply.
    this.#server = net.createServer({ allowHalfOpen: true }, (socket) => { this.#accept(socket) })
  }

  /**
   * Listens on `path` (its directory is created 0755; the socket is 0666: anyone may connect,
   * and what each peer may do is decided from its credentials). A leftover socket file that
   * nobody answers on is replaced; one that is in use is an error.
   */
  static async listen (options: ControlServerOptions): Promise<ControlServer> {
    const server = new ControlServer(options)
    mkdirSync(path.dirname(options.path), { recursive: true, mode: 0o755 })
    if (await answers(options.path)) throw new Error(`control socket ${options.path} is in use by another daemon`)
    rmSync(options.path, { force: true })
    await new Promise<void>((resolve, reject) => {
      server.#server.once('error', reject)
      server.#server.listen(options.path, () => {
        server.#server.off('error', reject)
        resolve()
      })
    })
    chmodSync(options.path, 0o666)
    server.#server.on('error', (err) => { server.#log('error', `control socket: ${err.message}`) })
    const seen = new Promise<PeerCredentials | undefined>((resolve) => { server.#selfTest = resolve })
    server.credentialsTrusted = options.credentials !== undefined || await selfTest(options.path, seen)
    server.#selfTest = null
    if (!server.credentialsTrusted) {
      server.#log('warn', `peer credentials cannot be read (${peerCredentialsError() ?? 'SO_PEERCRED self-test failed'}): every control client is treated as unprivileged`)
    }
    return server
  }

  get clients (): ClientInfo[] {
    return [...this.#sessions.values()].map((s) => s.info())
  }

  /** Stops listening, hangs up on every client, removes the socket file. */
  async close (): Promise<void> {
    for (const s of this.#sessions.values()) s.socket.destroy()
    await new Promise<void>((resolve) => { this.#server.close(() => { resolve() }) })
    rmSync(this.path, { force: true })
  }

  #accept (socket: net.Socket): void {
    const credentials = (this.#options.credentials ?? readPeerCredentials)(socket)
    if (this.#selfTest !== null) {
      this.#selfTest(credentials)
      socket.destroy()
      return
    }
    socket.on('error', () => {})
    const max = this.#options.maxClients ?? 128
    if (this.#sessions.size >= max) {
      this.#log('warn', `control client refused: ${max} clients already connected`)
      socket.end(encodeFrame(`fail\ntoo many control clients (the limit is ${max}); try again later`))
      setTimeout(() => { socket.destroy() }, 1000).unref()
      return
    }
    const privileged = this.credentialsTrusted && credentials?.uid === 0
    const session = new Session(this.#nextId++, socket, credentials, privileged)
    this.#sessions.set(session.id, session)
    socket.on('data', (chunk: Buffer) => { this.#data(session, chunk) })
    socket.on('end', () => {
      session.ended = true
      if (session.state === 'RECEIVE' && !session.decoder.started) socket.end()
    })
    socket.on('close', () => { this.#hangUp(session) })
  }

  #data (session: Session, chunk: Buffer): void {
    session.decoder.push(chunk)
    if (session.decoder.buffered > MAX_PENDING) {
      this.#drop(session, `sent ${session.decoder.buffered} bytes ahead of its request`)
      return
    }
    if (session.state === 'RECEIVE') this.#receive(session)
  }

  /** RECEIVE: wait for a whole frame; the deadline starts with its first byte. */
  #receive (session: Session): void {
    if (session.decoder.started && session.deadline === null) this.#startDeadline(session)
    let body: Buffer | undefined
    try {
      body = session.decoder.next()
    } catch (err) {
      this.#drop(session, (err as Error).message)
      return
    }
    if (body === undefined) return
    session.requests++
    session.socket.pause()
    this.#parse(session, body)
  }

  /** PARSE: text, command, permission. Every failure here becomes a reply, except bad bytes. */
  #parse (session: Session, body: Buffer): void {
    session.state = 'PARSE'
    let text: string
    try {
      text = decodeText(body)
    } catch (err) {
      this.#drop(session, (err as Error).message)
      return
    }
    let command: Command
    try {
      command = parseCommand(text)
    } catch (err) {
      if (!(err instanceof ControlError)) throw err
      this.#reply(session, `fail\n${err.message} (try: help)`)
      return
    }
    // Authorised on the very object that is dispatched below.
    if (!isReadOnly(command) && !session.privileged) {
      this.#reply(session, `fail\npermission denied: "${command.kind}" changes the daemon and needs root; other users may run show and help`)
      return
    }
    if (!needsLock(command)) {
      void this.#work(session, command, false)
      return
    }
    session.state = 'WAIT_FOR_LOCK'
    const waiter: LockWaiter = {
      grant: () => {
        session.waiter = null
        void this.#work(session, command, true)
      }
    }
    if (this.#options.lock.request(waiter)) void this.#work(session, command, true)
    else session.waiter = waiter
  }

  /** WORK: the deadline ends when the handler starts; a running handler is never cut. */
  async #work (session: Session, command: Command, locked: boolean): Promise<void> {
    this.#clearDeadline(session)
    session.state = 'WORK'
    let reply: string
    try {
      reply = await this.#options.run(command, { client: session.info() })
    } catch (err) {
      reply = `fail\n${(err as Error).message}`
    } finally {
      if (locked) this.#options.lock.release()
    }
    // A client that hung up meanwhile gets nothing; the command has run (as multipathd's would).
    if (!session.closed) this.#reply(session, reply)
  }

  /** SEND: one frame; back to RECEIVE once the socket has taken all of it. */
  #reply (session: Session, text: string, thenClose = false): void {
    this.#clearDeadline(session)
    session.state = 'SEND'
    let frame = encodeFrame(text)
    if (frame.length - FRAME_HEADER > MAX_REPLY) frame = encodeFrame(`fail\nthe reply would be ${frame.length} bytes, above the ${MAX_REPLY}-byte limit`)
    const done = (): void => {
      if (session.closed) return
      if (thenClose || session.ended) {
        session.socket.end()
        return
      }
      session.state = 'RECEIVE'
      session.socket.resume()
      // A next request may already be buffered.
      this.#receive(session)
    }
    if (session.socket.write(frame)) done()
    else session.socket.once('drain', done)
  }

  #startDeadline (session: Session): void {
    session.deadline = setTimeout(() => { this.#expired(session) }, this.timeoutMs)
  }

  #clearDeadline (session: Session): void {
    if (session.deadline !== null) clearTimeout(session.deadline)
    session.deadline = null
  }

  #expired (session: Session): void {
    session.deadline = null
    if (session.closed) return
    if (session.state === 'WAIT_FOR_LOCK' && session.waiter !== null) {
      this.#options.lock.cancel(session.waiter)
      session.waiter = null
      this.#log('info', `control client ${session.id}: timed out waiting for the config lock`)
      this.#reply(session, 'fail\ntimeout')
    } else if (session.state === 'RECEIVE') {
      // Half a frame: answer, then close, since whatever comes next is out of step.
      this.#log('info', `control client ${session.id}: timed out in the middle of a request`)
      session.socket.pause()
      this.#reply(session, 'fail\ntimeout', true)
    }
  }

  /** Closes without a reply: the client is not speaking our framing. */
  #drop (session: Session, why: string): void {
    this.#log('warn', `control client ${session.id} dropped: ${why}`)
    session.socket.destroy()
  }

  #hangUp (session: Session): void {
    if (session.closed) return
    session.closed = true
    this.#clearDeadline(session)
    if (session.waiter !== null) this.#options.lock.cancel(session.waiter)
    session.waiter = null
    this.#sessions.delete(session.id)
  }
}

/** True if something accepts connections on `socketPath`. */
function answers (socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socketPath)
    s.once('connect', () => { s.destroy(); resolve(true) })
    s.once('error', () => { resolve(false) })
  })
}
