/**
 * Opening the byte stream. The client never creates sockets itself: it is handed an opener
 * (undici's connector seam), so tests and embedders can supply any Duplex (a socketpair, a
 * stdio pipe to `nbdkit -s`), and the reconnect loop can open as many as it needs.
 */
import net from 'node:net'
import type { Duplex } from 'node:stream'
import { AbortedError, ConnectionError } from '../errors.ts'
import type { NbdAddress } from '../protocol/uri.ts'
import { ReadHook } from './read-hook.ts'

/** Opens a fresh connection to the server; rejects promptly when `signal` fires. */
export type OpenSocket = (signal: AbortSignal) => Promise<Duplex>

export function describeAddress (address: NbdAddress): string {
  return address.transport === 'unix' ? `unix:${address.path}` : `${address.host}:${address.port}`
}

/** The default opener: TCP with Nagle off (both sides SHOULD set TCP_NODELAY), or a Unix socket. */
export function socketOpener (address: NbdAddress): OpenSocket {
  return (signal) => new Promise<Duplex>((resolve, reject) => {
    if (signal.aborted) {
      reject(new AbortedError(signal.reason))
      return
    }
    const hook = new ReadHook()
    const socket = address.transport === 'unix'
      ? net.connect({ path: address.path, onread: hook.options })
      : net.connect({ host: address.host, port: address.port, noDelay: true, onread: hook.options })
    ReadHook.register(socket, hook)
    const cleanup = (): void => {
      socket.off('connect', onConnect)
      socket.off('error', onError)
      signal.removeEventListener('abort', onAbort)
    }
    const onConnect = (): void => {
      cleanup()
      resolve(socket)
    }
    const onError = (err: NodeJS.ErrnoException): void => {
      cleanup()
      socket.destroy()
      reject(new ConnectionError(`cannot connect to ${describeAddress(address)}: ${err.code ?? err.message}`, { cause: err }))
    }
    const onAbort = (): void => {
      cleanup()
      socket.destroy()
      reject(signal.reason instanceof Error ? signal.reason : new AbortedError(signal.reason))
    }
    socket.once('connect', onConnect)
    socket.once('error', onError)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}
