/**
 * Who is on the other end of a Unix socket: getsockopt(SO_PEERCRED), through koffi, since
 * Node's net module has no getsockopt. Read once, at connect (the credentials are those of the
 * process that called connect(2)). Anything that goes wrong means "unprivileged".
 *
 * koffi is an optional dependency: it is imported on first use (loadPeerCredentials, which the
 * control server's start-up self-test awaits), never by the library. Without it every control
 * client is unprivileged, and peerCredentialsError() says why.
 */
import net from 'node:net'

export interface PeerCredentials {
  readonly pid: number
  readonly uid: number
  readonly gid: number
}

const SOL_SOCKET = 1
/** asm-generic value (x86-64, arm64, riscv...); powerpc differs and is not supported. */
const SO_PEERCRED = process.arch === 'ppc64' ? 21 : 17

type GetSockOpt = (fd: number, level: number, name: number, value: Buffer, length: number[]) => number
interface Koffi {
  load: (name: string) => { func: (declaration: string) => unknown }
}

/** undefined: not tried yet; null: unavailable (see loadError). */
let getsockopt: GetSockOpt | null | undefined
let loading: Promise<boolean> | undefined
let loadError: string | undefined

/** Loads koffi and getsockopt once; false (and peerCredentialsError() says why) when it cannot. */
export function loadPeerCredentials (): Promise<boolean> {
  loading ??= (async () => {
    try {
      // A variable specifier: bundlers and tsc leave an optional native module alone.
      const specifier = 'koffi'
      const mod = await import(specifier) as { default?: Koffi } & Koffi
      const koffi = mod.default ?? mod
      const libc = koffi.load('libc.so.6')
      getsockopt = libc.func('int getsockopt(int fd, int level, int optname, _Out_ uint8_t *optval, _Inout_ uint32_t *optlen)') as GetSockOpt
    } catch (err) {
      getsockopt = null
      const code = (err as NodeJS.ErrnoException).code
      loadError = code === 'ERR_MODULE_NOT_FOUND'
        ? 'the optional dependency koffi is not installed (npm install koffi)'
        : `koffi could not load getsockopt: ${err instanceof Error ? err.message : String(err)}`
    }
    return getsockopt !== null
  })()
  return loading
}

/** Why peer credentials cannot be read, once loadPeerCredentials() has failed. */
export function peerCredentialsError (): string | undefined {
  return loadError
}

export function readPeerCredentials (socket: net.Socket): PeerCredentials | undefined {
  const fn = getsockopt ?? null
  // The fd is not public API; every version of Node we run has it on the handle.
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd
  if (fn === null || typeof fd !== 'number' || fd < 0) return undefined
  const value = Buffer.alloc(12)
  const length = [12]
  try {
    if (fn(fd, SOL_SOCKET, SO_PEERCRED, value, length) !== 0 || length[0] !== 12) return undefined
  } catch {
    return undefined
  }
  return { pid: value.readInt32LE(0), uid: value.readUInt32LE(4), gid: value.readUInt32LE(8) }
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
