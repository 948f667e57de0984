/**
 * Who is on the other end of a Unix socket: getsockopt(SO_PEERCRED), through koffi, since
 * Node's net module has no getsockopt. Read once, at connect (the credentials are those of the
 * process that called connect(2)). Anything that goes wrong means "unprivileged".
 */
import net from 'node:net'
import koffi from 'koffi'

export interface PeerCredentials {
  readonly pid: number
  readonly uid: number
  readonly gid: number
}

const SOL_SOCKET = 1
/** asm-generic value (x86-64, arm64, riscv...); powerpc differs and is not supported. */
const SO_PEERCRED = process.arch === 'ppc64' ? 21 : 17

type GetSockOpt = (fd: number, level: number, name: number, value: Buffer, length: number[]) => number
let getsockopt: GetSockOpt | null | undefined

function load (): GetSockOpt | null {
  if (getsockopt !== undefined) return getsockopt
  try {
    const libc = koffi.load('libc.so.6')
    getsockopt = libc.func('int getsockopt(int fd, int level, int optname, _Out_ uint8_t *optval, _Inout_ uint32_t *optlen)') as GetSockOpt
  } catch {
    getsockopt = null
  }
  return getsockopt
}

export function readPeerCredentials (socket: net.Socket): PeerCredentials | undefined {
  const fn = load()
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
