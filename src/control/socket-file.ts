/**
 * The control socket's file: made where nobody else can touch it, and only then put in place.
 *
 *   mkdtemp DIR/.nbdtsXXXXXX (0700) ─► bind DIR/.nbdtsXXXXXX/s ─► chmod 0666 there
 *     ─► rename over PATH (refused if PATH is anything but absent or a dead socket; a link at
 *        PATH is never followed: rename replaces names, and connect() only probes a socket)
 *
 * No chmod ever goes through PATH, so a link swapped in there changes nobody's file. The
 * private directory stays until release (libuv unlinks the name it bound when it closes, and
 * that name must stay ours). Release unlinks PATH only while it is still our socket (dev/ino).
 */
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, renameSync, rmdirSync, unlinkSync, type Stats } from 'node:fs'
import net from 'node:net'
import path from 'node:path'

export interface SocketFile {
  readonly path: string
  readonly dev: number
  readonly ino: number
  readonly privateDir: string
}

/** Binds `server` and puts its socket (mode 0666) at `socketPath`; its directory is made 0755. */
export async function bindSocketFile (server: net.Server, socketPath: string): Promise<SocketFile> {
  const dir = path.dirname(socketPath)
  mkdirSync(dir, { recursive: true, mode: 0o755 })
  if (checkSocketPath(socketPath) !== undefined && await answers(socketPath)) {
    throw new Error(`control socket ${socketPath} is in use by another daemon`)
  }
  const privateDir = mkdtempSync(path.join(dir, '.nbdts'))
  try {
    const staging = path.join(privateDir, 's')
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(staging, () => {
        server.off('error', reject)
        resolve()
      })
    })
    // Inside a 0700 directory of ours: nobody can have swapped the name for a link.
    chmodSync(staging, 0o666)
    checkSocketPath(socketPath)
    renameSync(staging, socketPath)
    const bound = lstatSync(socketPath)
    return { path: socketPath, dev: bound.dev, ino: bound.ino, privateDir }
  } catch (err) {
    if (server.listening) await new Promise<void>((resolve) => { server.close(() => { resolve() }) })
    rmdirSync(privateDir)
    throw err
  }
}

/** After the server closed: removes the socket file if it is still ours, and the private directory. */
export function releaseSocketFile (file: SocketFile): void {
  let now: Stats | undefined
  try {
    now = lstatSync(file.path)
  } catch { /* already gone */ }
  if (now !== undefined && now.dev === file.dev && now.ino === file.ino) unlinkSync(file.path)
  try {
    rmdirSync(file.privateDir)
  } catch { /* not empty: someone else's doing; leave it */ }
}

/**
 * What is at `socketPath`, without following a link: undefined when nothing is, the stat of a
 * socket; anything else is refused (a control socket path never names a file we would replace).
 */
function checkSocketPath (socketPath: string): Stats | undefined {
  let stat: Stats
  try {
    stat = lstatSync(socketPath)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
  if (stat.isSocket()) return stat
  const what = stat.isSymbolicLink() ? 'a symbolic link' : stat.isDirectory() ? 'a directory' : 'not a socket'
  throw new Error(`control socket path ${socketPath} is ${what}; refusing to replace it`)
}

/** True if something accepts connections on `socketPath`. */
function answers (socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socketPath)
    s.once('connect', () => { s.destroy(); resolve(true) })
    s.once('error', () => { resolve(false) })
  })
}
