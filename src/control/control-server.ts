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
 *
 * No local user can lock root out (uxlsnr.md has no such limits; a daemon run as root needs
 * them). Credentials are read at accept, before anything is counted, and then:
 *
 *   slots        maxClients (128): root may take all of them; other users together at most
 *                maxClients - reservedForRoot (16 stay free for root), and each uid at most
 *                maxClientsPerUser (16). The excess gets "fail" and a reason, then a hang-up.
 *   idle         a connection that starts no request within idleTimeoutMs (30 s) of its accept
 *                or of its last reply is closed; a started request has its own deadline.
 *   log          what is said about one client (dropped, timed out, idle) is limited per uid
 *                (log-limiter.ts: 5 lines per 10 s, then one line with the count); refusals
 *                are counted and said once per 10 s.
 *
 * The socket file is made in a private directory and renamed into place (socket-file.ts).
 */
import type net from 'node:net'
import { createServer } from 'node:net'
import { performance } from 'node:perf_hooks'
import type { ConfigLock, LockWaiter } from './config-lock.ts'
import { ControlError } from './errors.ts'
import { FRAME_HEADER, FrameDecoder, MAX_COMMAND, MAX_REPLY, decodeText, encodeFrame } from './frame.ts'
import { isReadOnly, needsLock, parseCommand, type Command } from './grammar.ts'
import { peerCredentialsError, readPeerCredentials, selfTest, type PeerCredentials } from './peer-credentials.ts'
import { LogLimiter } from './log-limiter.ts'
import { bindSocketFile, releaseSocketFile, type SocketFile } from './socket-file.ts'

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
  /** Of maxClients, how many only root may take. @default 16 */
  readonly reservedForRoot?: number
  /** Clients one user other than root may have connected at once. @default 16 */
  readonly maxClientsPerUser?: number
  /** A connection idle this long (no request started since accept or the last reply) is closed, ms. @default 30000 */
  readonly idleTimeoutMs?: number
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
  idle: NodeJS.Timeout | null = null
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
  /** Sessions per uid for every client that is not root (-1: credentials unknown). */
  readonly #perUser = new Map<number, number>()
  #unprivileged = 0
  readonly #log: ControlLog
  readonly #clientLog: LogLimiter
  #nextId = 1
  #selfTest: ((credentials: PeerCredentials | undefined) => void) | null = null
  #file: SocketFile | null = null
  /** Refusals since the last one logged: a flood is logged once per interval, not once per connection. */
  #refusals = { count: 0, lastLogged: -Infinity }

  private constructor (options: ControlServerOptions) {
    this.path = options.path
    this.timeoutMs = options.timeoutMs ?? 4000
    this.#options = options
    this.#log = options.log ?? (() => {})
    this.#clientLog = new LogLimiter(this.#log)
    // Half-open: a one-shot client may shut down its writing side and still get its reply.
    this.#server = createServer({ allowHalfOpen: true }, (socket) => { this.#accept(socket) })
  }

  /**
   * Listens on `path` (its directory is created 0755; the socket is 0666: anyone may connect,
   * and what each peer may do is decided from its credentials). A leftover socket file that
   * nobody answers on is replaced; one that is in use is an error, and so is anything at
   * `path` that is not a socket (a file, a directory, a symbolic link).
   */
  static async listen (options: ControlServerOptions): Promise<ControlServer> {
    const server = new ControlServer(options)
    server.#file = await bindSocketFile(server.#server, options.path)
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

  /** Stops listening, hangs up on every client, removes the socket file if it is still ours. */
  async close (): Promise<void> {
    for (const s of this.#sessions.values()) s.socket.destroy()
    await new Promise<void>((resolve) => { this.#server.close(() => { resolve() }) })
    this.#clientLog.close()
    const file = this.#file
    this.#file = null
    if (file !== null) releaseSocketFile(file)
  }

  #accept (socket: net.Socket): void {
    const credentials = (this.#options.credentials ?? readPeerCredentials)(socket)
    if (this.#selfTest !== null) {
      this.#selfTest(credentials)
      socket.destroy()
      return
    }
    socket.on('error', () => {})
    const privileged = this.credentialsTrusted && credentials?.uid === 0
    const refusal = this.#admission(privileged, credentials)
    if (refusal !== undefined) {
      this.#refuse(socket, refusal)
      return
    }
    const session = new Session(this.#nextId++, socket, credentials, privileged)
    this.#sessions.set(session.id, session)
    if (!privileged) {
      const uid = credentials?.uid ?? -1
      this.#perUser.set(uid, (this.#perUser.get(uid) ?? 0) + 1)
      this.#unprivileged++
    }
    this.#armIdle(session)
    socket.on('data', (chunk: Buffer) => { this.#data(session, chunk) })
    socket.on('end', () => {
      session.ended = true
      if (session.state === 'RECEIVE' && !session.decoder.started) socket.end()
    })
    socket.on('close', () => { this.#hangUp(session) })
  }

  /** Why a new client may not have a slot, or undefined when it may. */
  #admission (privileged: boolean, credentials: PeerCredentials | undefined): string | undefined {
    const max = this.#options.maxClients ?? 128
    if (this.#sessions.size >= max) return `too many control clients (the limit is ${max}); try again later`
    if (privileged) return undefined
    const shared = Math.max(1, max - (this.#options.reservedForRoot ?? 16))
    if (this.#unprivileged >= shared) return `too many control clients (the limit is ${max}); try again later`
    const perUser = this.#options.maxClientsPerUser ?? 16
    if ((this.#perUser.get(credentials?.uid ?? -1) ?? 0) >= perUser) return `too many control clients for this user (the limit is ${perUser})`
    return undefined
  }

  #refuse (socket: net.Socket, reason: string): void {
    const now = performance.now()
    this.#refusals.count++
    if (now - this.#refusals.lastLogged >= 10_000) {
      this.#log('warn', `control client refused: ${reason}${this.#refusals.count > 1 ? ` (${this.#refusals.count} refused since the last report)` : ''}`)
      this.#refusals = { count: 0, lastLogged: now }
    }
    socket.pause()
    socket.end(encodeFrame(`fail\n${reason}`), () => { socket.destroy() })
    setTimeout(() => { socket.destroy() }, 1000).unref()
  }

  /** RECEIVE with nothing started: the idle bound runs (from accept, or from the last reply). */
  #armIdle (session: Session): void {
    this.#clearIdle(session)
    const ms = this.#options.idleTimeoutMs ?? 30_000
    if (ms <= 0) return
    session.idle = setTimeout(() => {
      session.idle = null
      if (session.closed || session.state !== 'RECEIVE' || session.decoder.started) return
      this.#say(session, 'debug', `control client ${session.id}: idle for ${ms} ms, closing`)
      session.socket.destroy()
    }, ms)
  }

  #clearIdle (session: Session): void {
    if (session.idle !== null) clearTimeout(session.idle)
    session.idle = null
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
    if (session.decoder.started) {
      this.#clearIdle(session)
      if (session.deadline === null) this.#startDeadline(session)
    }
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
      this.#armIdle(session)
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
      this.#say(session, 'info', `control client ${session.id}: timed out waiting for the config lock`)
      this.#reply(session, 'fail\ntimeout')
    } else if (session.state === 'RECEIVE') {
      // Half a frame: answer, then close, since whatever comes next is out of step.
      this.#say(session, 'info', `control client ${session.id}: timed out in the middle of a request`)
      session.socket.pause()
      this.#reply(session, 'fail\ntimeout', true)
    }
  }

  /** Closes without a reply: the client is not speaking our framing. */
  #drop (session: Session, why: string): void {
    this.#say(session, 'warn', `control client ${session.id} dropped: ${why}`)
    session.socket.destroy()
  }

  /** A line about one client, limited per uid (a flood of bad connections is one user's). */
  #say (session: Session, level: Parameters<ControlLog>[0], message: string): void {
    const uid = session.credentials?.uid
    this.#clientLog.log(uid === undefined ? 'an unknown uid' : `uid ${uid}`, level, `${message}${uid === undefined ? '' : ` (uid ${uid})`}`)
  }

  #hangUp (session: Session): void {
    if (session.closed) return
    session.closed = true
    this.#clearDeadline(session)
    this.#clearIdle(session)
    if (!session.privileged) {
      const uid = session.credentials?.uid ?? -1
      const left = (this.#perUser.get(uid) ?? 1) - 1
      if (left === 0) this.#perUser.delete(uid)
      else this.#perUser.set(uid, left)
      this.#unprivileged--
    }
    if (session.waiter !== null) this.#options.lock.cancel(session.waiter)
    session.waiter = null
    this.#sessions.delete(session.id)
  }
}
