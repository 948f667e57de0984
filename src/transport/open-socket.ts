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
import { nativeTried, setSendBuffer } from '../util/libc.ts'
import { busyPoll } from './busy-poll.ts'

/** Opens a fresh connection to the server; rejects promptly when `signal` fires. */
export type OpenSocket = (signal: AbortSignal) => Promise<Duplex>

export function describeAddress (address: NbdAddress): string {
  return address.transport === 'unix' ? `unix:${address.path}` : `${address.host}:${address.port}`
}

/**
 * A Unix socket's send buffer bounds what a writer has on its way: by default 208 KiB, so a
 * 1 MiB WRITE leaves in five pieces, each after an event-loop turn that waits for the server to
 * read the last one, and the server idles whenever our loop is busy. 4 MiB (the kernel's usual
 * net.core.wmem_max; it caps and doubles what we ask) lets several payloads queue in the kernel:
 * 1 MiB writes QD 16 went from 2.0 to 3.2 GB/s. TCP tunes its own buffers (setting one would
 * switch that off: no gain measured).
 */
const UNIX_SEND_BUFFER = 4 * 1024 * 1024

function socketFd (socket: net.Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd
  return typeof fd === 'number' ? fd : -1
}

/**
 * Loading koffi takes 40-60 ms, a third of a short command's run (nbdts info, a list). So when
 * it is not loaded yet, the buffer is widened at the socket's first 'drain': the first time
 * our writes outran the default buffer, which is when a wider one starts to matter (a write
 * load: a mount, a copy to NBD). A command that only asks and reads never pays for it, however
 * long it runs.
 */
function widenSendBuffer (socket: net.Socket, fd: number): void {
  const widen = (): void => {
    // After destroy() the descriptor may already be closed and reused: only while it is ours.
    if (socket.destroyed || socketFd(socket) !== fd) return
    try {
      setSendBuffer(fd, UNIX_SEND_BUFFER)
    } catch {
      // Without koffi (or with a smaller cap) the default buffer works, only slower.
    }
  }
  if (nativeTried()) {
    widen()
    return
  }
  socket.once('drain', widen)
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
      const fd = socketFd(socket)
      if (fd >= 0) {
        if (address.transport === 'unix') widenSendBuffer(socket, fd)
        busyPoll.watch(fd)
        socket.once('close', () => { busyPoll.unwatch(fd) })
      }
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
