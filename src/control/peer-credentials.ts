/**
 * Who is on the other end of a Unix socket: getsockopt(SO_PEERCRED) (src/util/libc.ts, through
 * koffi, since Node's net module has no getsockopt). Read once, at connect (the credentials are
 * those of the process that called connect(2)). Anything that goes wrong means "unprivileged".
 *
 * koffi is an optional dependency, loaded on first use (loadPeerCredentials, which the control
 * server's start-up self-test awaits), never by the library. Without it every control client
 * is unprivileged, and peerCredentialsError() says why.
 */
import net from 'node:net'
import { nativeProblem, peerCredentials } from '../util/libc.ts'

export interface PeerCredentials {
  readonly pid: number
  readonly uid: number
  readonly gid: number
}

let loadError: string | undefined
let loaded: boolean | undefined

/** Loads koffi once; false (and peerCredentialsError() says why) when it cannot. */
export function loadPeerCredentials (): Promise<boolean> {
  if (loaded === undefined) {
    const problem = nativeProblem()
    loaded = problem === undefined
    if (problem !== undefined) loadError = `reading them needs ${problem}`
  }
  return Promise.resolve(loaded)
}

/** Why peer credentials cannot be read, once loadPeerCredentials() has failed. */
export function peerCredentialsError (): string | undefined {
  return loadError
}

export function readPeerCredentials (socket: net.Socket): PeerCredentials | undefined {
  // The fd is not public API; every version of Node we run has it on the handle.
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd
  if (loaded !== true || typeof fd !== 'number' || fd < 0) return undefined
  try {
    return peerCredentials(fd)
  } catch {
    return undefined
  }
}

/**
 * Connects to our own listening socket and checks that we see ourselves: if this does not
 * work, credentials cannot be trusted and every client must be treated as unprivileged.
 */
export async function selfTest (path: string, seen: Promise<PeerCredentials | undefined>): Promise<boolean> {
  if (!await loadPeerCredentials()) return false
  const socket = net.connect(path)
  socket.on('error', () => {})
  let timer: NodeJS.Timeout | undefined
  try {
    const creds = await Promise.race([seen, new Promise<undefined>((resolve) => { timer = setTimeout(() => { resolve(undefined) }, 2000) })])
    return creds !== undefined && creds.pid === process.pid && creds.uid === (process.getuid?.() ?? -1)
  } finally {
    clearTimeout(timer)
    socket.destroy()
  }
}
