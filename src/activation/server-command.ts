/**
 * A server run as a child with systemd socket activation, as libnbd's
 * nbd_connect_systemd_socket_activation does: we create the listening Unix socket in a private
 * directory, the command inherits it as fd 3 with LISTEN_PID (its own pid), LISTEN_FDS=1 and
 * LISTEN_FDNAMES=nbd, and we connect to it as often as we like. nbdkit and qemu-nbd both serve
 * a socket handed over this way.
 *
 *   startServerCommand(argv)
 *     mkdtemp (0700) ── listen DIR/listen ── spawn sh -c 'LISTEN_PID=$$ exec "$@"' argv
 *       (fd 3 = the socket)  ── rename DIR/listen → DIR/sock ── close our copy
 *     open() → connect DIR/sock         (queued in the backlog until the server accepts)
 *     stop() → SIGTERM, SIGKILL after 5 s, rm -rf DIR
 *
 * LISTEN_PID must be the server's own pid. libnbd forks, sets it in the child and execs; Node
 * cannot run code between fork and exec, so a shell does it: `$$` is the shell's pid and `exec`
 * keeps it for the command. The shell is POSIX sh, started with an argv (never a command
 * string built from ours), so nothing in argv is interpreted.
 *
 * Our copy of the listening socket is closed once the child has it, so every connection goes
 * to the server (Node would otherwise accept some itself). Closing a Node Unix server unlinks
 * its path; renaming the path first keeps the server's socket reachable.
 *
 * The server ends with stop(), with this process (an exit hook, and PR_SET_PDEATHSIG through
 * setpriv(1) where it is installed, for a SIGKILL of ours), or on its own.
 */
// node:child_process (and the dgram, net and stream code it loads) is imported when a server is
// started: `copy` and `info` load this module for every URI, and most name no command.
import type { ChildProcess } from 'node:child_process'
import { accessSync, constants, mkdtempSync, renameSync, rmSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import type { Duplex } from 'node:stream'
import { ConnectionError, InvalidArgumentError, throwIfAborted } from '../errors.ts'
import { formatNbdUri } from '../protocol/uri.ts'
import { socketOpener, type OpenSocket } from '../transport/open-socket.ts'

export interface ServerCommandOptions {
  /** Aborts the start. */
  readonly signal?: AbortSignal
  /** The export the URI names. @default '' */
  readonly exportName?: string
  /**
   * The server's stderr: 'inherit' passes it through to ours (and keeps its last lines for
   * error messages), 'pipe' only keeps them, 'ignore' drops it. Its stdout always goes to our
   * stderr: our stdout may be a copy's data. @default 'inherit'
   */
  readonly stderr?: 'inherit' | 'pipe' | 'ignore'
  /** Kill the server if this process dies, even by SIGKILL (setpriv --pdeathsig). @default true */
  readonly exitWithParent?: boolean
  /** How long stop() waits after SIGTERM before SIGKILL, ms. @default 5000 */
  readonly stopTimeout?: number
  /**
   * Its own session, out of the terminal's process group: a Ctrl-C meant for us (a mount in
   * the foreground, which flushes before it exits) must not stop the server first. @default false
   */
  readonly ownSession?: boolean
}

export interface ExitStatus {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
}

export interface ServerCommand {
  /** nbd+unix:///EXPORT?socket=DIR/sock */
  readonly uri: string
  /** The Unix socket the server listens on. */
  readonly socket: string
  /** An opener for NbdClient's `open` option: connects, and names the exit status if the server died. */
  readonly open: OpenSocket
  /**
   * The error to report for a failure to reach the server: its exit (status and last words)
   * when it exited or exits within a grace period, else `err` itself.
   */
  readonly explain: (err: unknown) => Promise<unknown>
  readonly child: ChildProcess
  /** Settles when the server has exited (never rejects). */
  readonly exited: Promise<ExitStatus>
  /** The exit status, once the server has exited. */
  readonly exitStatus: ExitStatus | undefined
  /** The server's last stderr lines (with stderr 'inherit' or 'pipe'). */
  stderrTail: () => string
  /** Stops the server and removes the directory. Safe to call more than once. */
  stop: () => Promise<void>
  [Symbol.asyncDispose]: () => Promise<void>
}

/** sockaddr_un holds 108 bytes; libnbd uses /tmp for the same reason. */
const MAX_SOCKET_PATH = 100
const TAIL_BYTES = 4096
/** How long a refused connect waits to see the server's exit. */
const EXIT_GRACE = 2000

/** The shell step that sets LISTEN_PID to the pid the command will have (see above). */
const ACTIVATE = 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"'

export async function startServerCommand (argv: readonly string[], options: ServerCommandOptions = {}): Promise<ServerCommand> {
  if (argv.length === 0 || argv[0] === '') throw new InvalidArgumentError('the server command is empty')
  throwIfAborted(options.signal)
  const { spawn } = await import('node:child_process')
  const dir = privateDir()
  const listenPath = path.join(dir, 'listen')
  const socketPath = path.join(dir, 'sock')
  let child: ChildProcess
  try {
    const server = net.createServer()
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen({ path: listenPath, backlog: 128 }, () => { server.off('error', reject); resolve() })
    })
    const fd = (server as unknown as { _handle?: { fd?: number } })._handle?.fd
    if (typeof fd !== 'number' || fd < 0) {
      server.close()
      throw new ConnectionError('cannot hand the listening socket to the server command: its file descriptor is not available')
    }
    const env: NodeJS.ProcessEnv = { ...process.env, LISTEN_FDS: '1', LISTEN_FDNAMES: 'nbd' }
    delete env.LISTEN_PID
    const setpriv = options.exitWithParent === false ? undefined : findExecutable('setpriv')
    const command = setpriv === undefined ? [...argv] : [setpriv, '--pdeathsig', 'TERM', '--', ...argv]
    const wanted = options.stderr ?? 'inherit'
    child = spawn('/bin/sh', ['-c', ACTIVATE, 'nbdts-server', ...command], {
      stdio: ['ignore', 2, wanted === 'ignore' ? 'ignore' : 'pipe', fd],
      env,
      detached: options.ownSession === true
    })
    renameSync(listenPath, socketPath)
    server.close()
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve)
      child.once('error', (err) => { reject(new ConnectionError(`cannot start ${argv[0]}: ${err.message}`, { cause: err })) })
    })
  } catch (err) {
    rmSync(dir, { recursive: true, force: true })
    throw err
  }
  return supervise(child, argv, dir, socketPath, options)
}

function supervise (child: ChildProcess, argv: readonly string[], dir: string, socketPath: string, options: ServerCommandOptions): ServerCommand {
  let tail = ''
  child.stderr?.on('data', (d: Buffer) => {
    if (options.stderr !== 'pipe') process.stderr.write(d)
    tail = (tail + d.toString('utf8')).slice(-TAIL_BYTES)
  })
  let exitStatus: ExitStatus | undefined
  const exited = new Promise<ExitStatus>((resolve) => {
    child.once('exit', (code, signal) => {
      exitStatus = { code, signal }
      resolve(exitStatus)
    })
  })
  // Neither the child nor its stderr keeps a library user's process alive; the exit hook
  // stops the server when the process ends.
  child.unref()
  ;(child.stderr as unknown as { unref?: () => void } | null)?.unref?.()
  const onExit = (): void => {
    if (exitStatus === undefined) child.kill('SIGTERM')
    rmSync(dir, { recursive: true, force: true })
  }
  process.on('exit', onExit)

  const name = argv[0]!
  const describe = (status: ExitStatus): string => {
    const how = status.signal !== null ? `was killed by ${status.signal}` : `exited with code ${status.code}`
    const last = tail.trim().split('\n').slice(-2).join('; ')
    return `the server command ${name} ${how}${last === '' ? '' : ` (${last})`}`
  }
  const exitedWithin = async (ms: number): Promise<ExitStatus | undefined> => {
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<undefined>((resolve) => { timer = setTimeout(() => { resolve(undefined) }, ms) })
    try {
      return await Promise.race([exited, late])
    } finally {
      clearTimeout(timer)
    }
  }
  const connect = socketOpener({ transport: 'unix', path: socketPath })
  const open: OpenSocket = async (signal): Promise<Duplex> => {
    if (exitStatus !== undefined) throw new ConnectionError(describe(exitStatus))
    try {
      return await connect(signal)
    } catch (err) {
      // A refused connect means the server closed its socket: it is exiting. Say why, once
      // its exit is seen (the refusal can come before the exit event).
      if (!(err instanceof ConnectionError)) throw err
      const status = exitStatus ?? await exitedWithin(EXIT_GRACE)
      if (status !== undefined) throw new ConnectionError(describe(status), { cause: err })
      throw err
    }
  }

  // The socket was there, but the server went away before it spoke (it failed to start): its
  // exit, not the reset, is the reason worth telling.
  const explain = async (err: unknown): Promise<unknown> => {
    if (!(err instanceof ConnectionError)) return err
    const status = exitStatus ?? await exitedWithin(EXIT_GRACE)
    return status === undefined ? err : new ConnectionError(describe(status), { cause: err })
  }

  let stopping: Promise<void> | undefined
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (exitStatus === undefined) {
        child.kill('SIGTERM')
        const timer = setTimeout(() => { child.kill('SIGKILL') }, options.stopTimeout ?? 5000)
        await exited
        clearTimeout(timer)
      }
      process.off('exit', onExit)
      rmSync(dir, { recursive: true, force: true })
    })()
    return stopping
  }

  return {
    uri: formatNbdUri({ transport: 'unix', path: socketPath }, options.exportName ?? '', false),
    socket: socketPath,
    open,
    explain,
    child,
    exited,
    get exitStatus () { return exitStatus },
    stderrTail: () => tail,
    stop,
    [Symbol.asyncDispose]: stop
  }
}

function privateDir (): string {
  const base = path.join(tmpdir(), 'nbdts-sa-XXXXXX').length + '/listen'.length > MAX_SOCKET_PATH ? '/tmp' : tmpdir()
  // mkdtemp creates the directory 0700: nobody else can reach the socket.
  return mkdtempSync(path.join(base, 'nbdts-sa-'))
}

function findExecutable (name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    if (dir === '') continue
    const candidate = path.join(dir, name)
    try {
      accessSync(candidate, constants.X_OK)
      return candidate
    } catch { /* not here */ }
  }
  return undefined
}
