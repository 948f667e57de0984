/**
 * The client side: one request, one reply, over a connection that can be reused (the
 * interactive mode keeps it). It waits a little longer than the server's deadline, so the
 * server's own "fail\ntimeout" arrives before we give up.
 */
import net from 'node:net'
import { ControlError } from './errors.ts'
import { FrameDecoder, MAX_COMMAND, MAX_REPLY, decodeText, encodeFrame } from './frame.ts'
import { checkPeer, checkSocketPlace, type PeerTrust } from './trusted-peer.ts'

/** How much longer than the server's deadline the client waits. */
export const CLIENT_MARGIN_MS = 500

export interface ControlReply {
  readonly ok: boolean
  /** The reply text; for a failure, the reason after "fail\n". */
  readonly text: string
}

export function interpretReply (raw: string): ControlReply {
  if (raw === 'fail' || raw.startsWith('fail\n')) return { ok: false, text: raw.slice(5) }
  return { ok: true, text: raw }
}

export class ControlConnection {
  readonly #socket: net.Socket
  readonly #decoder = new FrameDecoder(MAX_REPLY, true)
  #waiting: { resolve: (raw: string) => void, reject: (err: Error) => void } | null = null
  #error: Error | null = null

  private constructor (socket: net.Socket) {
    this.#socket = socket
    socket.on('data', (chunk: Buffer) => {
      this.#decoder.push(chunk)
      this.#deliver()
    })
    const gone = (err?: Error): void => {
      this.#error ??= new ControlError('CTL_CLOSED', 'the daemon closed the control connection', err === undefined ? undefined : { cause: err })
      const w = this.#waiting
      this.#waiting = null
      w?.reject(this.#error)
    }
    socket.on('error', gone)
    socket.on('close', () => { gone() })
  }

  /**
   * Connects, and checks whom to (trusted-peer.ts: the socket's directory and file, then the
   * peer's credentials) before anything can be sent: CTL_UNTRUSTED otherwise.
   */
  static connect (socketPath: string, timeoutMs = 4000, trust?: PeerTrust): Promise<ControlConnection> {
    try {
      checkSocketPlace(socketPath, trust)
    } catch (err) {
      return Promise.reject(err)
    }
    return new Promise((resolve, reject) => {
      const socket = net.connect(socketPath)
      const timer = setTimeout(() => {
        socket.destroy()
        reject(new ControlError('CTL_TIMEOUT', `could not connect to ${socketPath} within ${timeoutMs} ms`))
      }, timeoutMs)
      socket.once('connect', () => {
        checkPeer(socket, socketPath, trust).then(() => {
          clearTimeout(timer)
          resolve(new ControlConnection(socket))
        }, (err: unknown) => {
          clearTimeout(timer)
          socket.destroy()
          reject(err)
        })
      })
      socket.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer)
        const hint = err.code === 'ENOENT' || err.code === 'ECONNREFUSED' ? ' (is the mount running? see --socket)' : ''
        reject(new ControlError('CTL_CONNECT', `cannot connect to ${socketPath}: ${err.code ?? err.message}${hint}`, { cause: err }))
      })
    })
  }

  /** Sends `command` and resolves with the reply; `timeoutMs` is the server's deadline. */
  request (command: string, timeoutMs = 4000): Promise<ControlReply> {
    if (this.#error !== null) return Promise.reject(this.#error)
    if (this.#waiting !== null) return Promise.reject(new Error('internal: one request at a time'))
    const frame = encodeFrame(command)
    if (frame.length - 8 > MAX_COMMAND) return Promise.reject(new ControlError('CTL_BAD_COMMAND', `command is longer than ${MAX_COMMAND} bytes`))
    return new Promise<string>((resolve, reject) => {
      const wait = timeoutMs + CLIENT_MARGIN_MS
      const timer = setTimeout(() => {
        this.#waiting = null
        // The stream is out of step now (a late reply would answer the next request): close.
        this.#socket.destroy()
        reject(new ControlError('CTL_TIMEOUT', `no reply within ${wait} ms`))
      }, wait)
      this.#waiting = {
        resolve: (raw) => { clearTimeout(timer); resolve(raw) },
        reject: (err) => { clearTimeout(timer); reject(err) }
      }
      this.#socket.write(frame)
      this.#deliver()
    }).then(interpretReply)
  }

  /** The connection is gone (the daemon closed it, say, after it sat idle). */
  get closed (): boolean {
    return this.#error !== null || this.#socket.destroyed
  }

  close (): void {
    this.#socket.destroy()
  }

  #deliver (): void {
    if (this.#waiting === null) return
    let body: Buffer | undefined
    try {
      body = this.#decoder.next()
    } catch (err) {
      this.#socket.destroy(err as Error)
      return
    }
    if (body === undefined) return
    const w = this.#waiting
    this.#waiting = null
    try {
      w.resolve(decodeText(body))
    } catch (err) {
      w.reject(err as Error)
    }
  }
}

/** One command, one reply, then hang up. */
export async function controlRequest (socketPath: string, command: string, timeoutMs = 4000, trust?: PeerTrust): Promise<ControlReply> {
  const connection = await ControlConnection.connect(socketPath, timeoutMs, trust)
  try {
    return await connection.request(command, timeoutMs)
  } finally {
    connection.close()
  }
}
