/**
 * Mounting as a user other than root, as libfuse does: fusermount3 (setuid root) checks that
 * the user may mount there, opens /dev/fuse as the user, mounts, and passes the descriptor
 * back over a Unix socket (the `_FUSE_COMMFD` protocol), then exits.
 *
 *   socketpair ──► fusermount3 -o OPTIONS -- TARGET   (_FUSE_COMMFD=3: its end of the pair)
 *                       │ open /dev/fuse, mount(2) on the checked target
 *                       └─ sendmsg(SCM_RIGHTS: the /dev/fuse fd) ─► exit 0
 *   wait for the exit ──► recvmsg (the message waits in the socket) ──► the device is ours
 *
 * Node cannot receive descriptors over a socket, so socketpair(2) and recvmsg(2) come through
 * koffi (src/util/libc.ts), loaded only here. fusermount3 decides rootmode, user_id and
 * group_id itself and refuses allow_other unless /etc/fuse.conf has user_allow_other.
 */
import { spawn } from 'node:child_process'
import { MountError } from '../errors.ts'
import { closeFd, receiveFd, socketPair, SOCK_STREAM } from '../util/libc.ts'

export interface FusermountSpec {
  readonly path: string
  readonly source: string
  readonly options: readonly string[]
  /** How long fusermount3 may take, ms. @default 30000 */
  readonly timeoutMs?: number
}

/** Mounts through fusermount3; resolves with the /dev/fuse descriptor. */
export async function mountWithFusermount (spec: FusermountSpec): Promise<number> {
  let ours: number
  let theirs: number
  try {
    [ours, theirs] = socketPair(SOCK_STREAM, 'mounting as a user other than root (through fusermount3)')
  } catch (err) {
    throw new MountError('native', (err as Error).message, { cause: err })
  }
  try {
    const options = [`fsname=${spec.source}`, 'subtype=nbdts', ...spec.options].join(',')
    const { code, output } = await run(['-o', options, '--', spec.path], theirs, spec.timeoutMs ?? 30_000)
    closeFd(theirs)
    theirs = -1
    // fusermount3 has exited: its message is in the socket, or it sent none (it failed).
    const fd = code === 0 ? receiveFd(ours, true) : undefined
    if (fd === undefined) throw new MountError(/busy/i.test(output) ? 'busy' : 'helper', `fusermount3 could not mount ${spec.path}: ${output || `exit ${code}`}`)
    return fd
  } finally {
    if (theirs >= 0) closeFd(theirs)
    closeFd(ours)
  }
}

function run (args: string[], commFd: number, timeoutMs: number): Promise<{ code: number | null, output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('fusermount3', args, { stdio: ['ignore', 'pipe', 'pipe', commFd], env: { ...process.env, _FUSE_COMMFD: '3' } })
    let output = ''
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { output += d })
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { output += d })
    const timer = setTimeout(() => { child.kill('SIGKILL') }, timeoutMs)
    child.on('error', (err) => {
      clearTimeout(timer)
      const missing = (err as NodeJS.ErrnoException).code === 'ENOENT'
      reject(new MountError('helper', missing ? 'fusermount3 is not installed (Debian: apt-get install fuse3); it is how users other than root mount' : `fusermount3: ${err.message}`, { cause: err }))
    })
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, output: output.trim().replace(/^fusermount3: /gm, '') })
    })
  })
}
