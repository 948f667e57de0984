/**
 * `nbdts mount URI FILE` and `nbdts umount FILE`.
 *
 * By default mount detaches like a daemon, but only once the mount is ready: the parent starts
 * the daemon with a pipe on fd 3 and waits for it to say "ready" (or why it failed), so a
 * script that runs `nbdts mount` can use FILE as soon as the command returns. --foreground
 * keeps it attached (systemd, tests); --pidfile is written only when the mount is ready.
 *
 *   parent ──spawn(--foreground --ready-fd 3)──► daemon: connect ─► mount ─► pidfile ─► "ready"
 *      └── waits for one line on fd 3, prints it, exits 0 (or 1 with the daemon's error)
 *
 * Signals (as multipathd): SIGHUP re-reads --config (like `ctl reconfigure`); SIGUSR1 and
 * SIGUSR2 log the counters (and keep Node's SIGUSR1 inspector from opening a debug port);
 * SIGPIPE is ignored; SIGINT, SIGTERM, SIGQUIT and the other signals whose default is to die
 * finish in-flight I/O, FLUSH and unmount (detaching a busy mount and serving it until its
 * last user lets go), so no signal leaves a dead mount behind. Only SIGKILL can.
 *
 * `nbdts umount` unmounts itself (umount(8), or fusermount3 -u): the kernel refuses a busy
 * mount atomically, and then nothing has changed. Once unmounted, the daemon sees its device
 * end, flushes and exits; umount waits for that when the mount's source names a daemon that
 * checks out (daemon-check.ts) and never signals anyone.
 */
import { spawn } from 'node:child_process'
import { closeSync, lstatSync, mkdirSync, statSync, writeSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { NbdClient } from '../client/nbd-client.ts'
import { describeError, MountError } from '../errors.ts'
import { ConfigLock, ControlServer, DaemonControl, parseConfigFile, readConfigFile, type Settings } from '../control/index.ts'
import { mountState, processExists, verifyDaemon } from '../fuse/daemon-check.ts'
import { FuseMount, cleanStaleMount } from '../fuse/fuse-mount.ts'
import { describeHolders } from '../fuse/holders.ts'
import { parseMountOptions } from '../fuse/mount-options.ts'
import { nbdtsMountAt, unmount } from '../fuse/mount-table.ts'
import { parseNbdUri } from '../protocol/uri.ts'
import { Pidfile } from '../util/safe-file.ts'
import { setIoFlusher } from '../util/libc.ts'
import { createLogger, type LogLevel } from './logger.ts'
import { trapSignals } from './signals.ts'
import { tlsArgs, tlsClientOptions, type TlsFlags } from './tls-options.ts'

export interface MountOptions extends TlsFlags {
  readonly readonly?: boolean
  /** ms */
  readonly reconnectDelay: number
  /** ms */
  readonly openTimeout: number
  readonly maxInFlight: number
  readonly connections: number | 'auto'
  readonly foreground?: boolean
  readonly pidfile?: string
  readonly controlSocket?: string
  readonly logLevel: LogLevel
  readonly logFile?: string
  readonly name: string
  /** `-o` values: FUSE mount options (mount-options.ts). */
  readonly options?: readonly string[]
  readonly readyFd?: number
  readonly config?: string
  /** ms */
  readonly controlTimeout: number
  /** Option names given on the command line (they win over the config file). */
  readonly explicit: ReadonlySet<string>
}

/** Where root's mounts keep their control sockets unless --control-socket says otherwise. */
export const CONTROL_DIR = '/run/nbdts'

/** Root's CONTROL_DIR; for other users $XDG_RUNTIME_DIR/nbdts, else /tmp/nbdts-UID. */
export function controlDir (): string {
  const uid = process.geteuid?.() ?? 0
  if (uid === 0) return CONTROL_DIR
  const runtime = process.env.XDG_RUNTIME_DIR
  return runtime !== undefined && runtime !== '' ? path.join(runtime, 'nbdts') : `/tmp/nbdts-${uid}`
}

export function defaultControlSocket (target: string): string {
  const name = path.resolve(target).slice(1).replace(/\//g, '-').replace(/[^A-Za-z0-9_.-]/g, '_')
  return path.join(controlDir(), `${name}.sock`)
}

/**
 * A user's control directory must be theirs alone: in /tmp, another user could have made it
 * first and would then own the socket's neighbourhood.
 */
function ensurePrivateDir (dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  const st = lstatSync(dir)
  const uid = process.geteuid?.() ?? 0
  if (!st.isDirectory() || st.uid !== uid || (st.mode & 0o077) !== 0) {
    throw new Error(`${dir} is not a private directory of uid ${uid} (owner ${st.uid}, mode ${(st.mode & 0o7777).toString(8)}): remove it, or give --control-socket`)
  }
}

/** Settings: defaults and command line, with the config file between them. */
function initialSettings (options: MountOptions): Settings {
  const settings: Settings = {
    reconnectDelay: options.reconnectDelay,
    openTimeout: options.openTimeout,
    maxInFlight: options.maxInFlight,
    logLevel: options.logLevel,
    controlTimeout: options.controlTimeout
  }
  if (options.config === undefined) return settings
  const fromFile = parseConfigFile(readConfigFile(options.config), options.config)
  for (const [key, value] of Object.entries(fromFile) as Array<[keyof Settings, never]>) {
    if (!options.explicit.has(key)) settings[key] = value
  }
  return settings
}

export interface Io {
  readonly out: (text: string) => void
}

export async function runMount (uri: string, file: string, options: MountOptions, io: Io): Promise<number> {
  parseNbdUri(uri)
  // Checked here, so a bad -o is a usage error before anything starts.
  parseMountOptions(options.options ?? [])
  const target = path.resolve(file)
  if (options.foreground === true) return await serve(uri, target, options)
  return await detach(uri, target, options, io)
}

/** Starts the daemon and waits for it to be ready. */
async function detach (uri: string, target: string, options: MountOptions, io: Io): Promise<number> {
  try {
    statSync(target)
  } catch (err) {
    // A stale mount answers ENOTCONN; cleanStaleMount below deals with it.
    if ((err as NodeJS.ErrnoException).code !== 'ENOTCONN') {
      throw new Error(`${target} does not exist: create an empty file (mounted over) or a directory first`)
    }
  }
  // Said here, where the user sees it, not only in the daemon's log.
  await cleanStaleMount(target, (_level, message) => { process.stderr.write(`nbdts: ${message}\n`) })
  // Pass on only what was given, so the config file keeps its say in the daemon too.
  const args = [process.argv[1]!, 'mount', uri, target, '--foreground', '--ready-fd', '3',
    '--connections', String(options.connections), '--name', options.name, ...tlsArgs(options)]
  const given = (key: string): boolean => options.explicit.has(key)
  if (given('reconnectDelay')) args.push('--reconnect-delay', `${options.reconnectDelay}ms`)
  if (given('openTimeout')) args.push('--open-timeout', `${options.openTimeout}ms`)
  if (given('maxInFlight')) args.push('--max-in-flight', String(options.maxInFlight))
  if (given('logLevel')) args.push('--log-level', options.logLevel)
  if (given('controlTimeout')) args.push('--control-timeout', `${options.controlTimeout}ms`)
  if (options.readonly === true) args.push('--readonly')
  for (const o of options.options ?? []) args.push('-o', o)
  if (options.pidfile !== undefined) args.push('--pidfile', path.resolve(options.pidfile))
  if (options.controlSocket !== undefined) args.push('--control-socket', path.resolve(options.controlSocket))
  if (options.logFile !== undefined) args.push('--log-file', path.resolve(options.logFile))
  if (options.config !== undefined) args.push('--config', path.resolve(options.config))
  const child = spawn(process.execPath, [...process.execArgv, ...args], { detached: true, stdio: ['ignore', 'ignore', 'ignore', 'pipe'] })
  const answer = await new Promise<string>((resolve) => {
    let text = ''
    const pipe = child.stdio[3] as NodeJS.ReadableStream
    pipe.setEncoding('utf8')
    pipe.on('data', (d: string) => {
      text += d
      if (text.includes('\n')) resolve(text.slice(0, text.indexOf('\n')))
    })
    pipe.on('error', () => {})
    child.once('exit', (code, signal) => { resolve(`error the mount daemon exited before it was ready (${code ?? signal})`) })
  })
  ;(child.stdio[3] as NodeJS.ReadableStream & { destroy: () => void }).destroy()
  child.unref()
  if (answer.startsWith('ready ')) {
    const [, pid, exportFile] = answer.split(' ')
    io.out(`mounted ${uri} at ${exportFile ?? target} (daemon pid ${pid})`)
    return 0
  }
  throw new Error(answer.replace(/^error /, ''))
}

/** The daemon itself (also what --foreground runs). */
async function serve (uri: string, target: string, options: MountOptions): Promise<number> {
  const settings = initialSettings(options)
  const log = createLogger(settings.logLevel, options.logFile)
  const ready = (line: string): void => {
    if (options.readyFd === undefined) return
    try {
      writeSync(options.readyFd, `${line}\n`)
      closeSync(options.readyFd)
    } catch { /* the parent is gone */ }
  }
  let stopping: ((why: string) => void) | undefined
  const stopped = new Promise<string>((resolve) => { stopping = resolve })
  const abort = new AbortController()
  let client: NbdClient | undefined
  let mount: FuseMount | undefined
  let control: ControlServer | undefined
  let pidfile: Pidfile | undefined
  let daemon: DaemonControl | undefined
  let stopSignal: string | undefined
  const untrap = trapSignals({
    stop: (signal) => {
      if (stopSignal !== undefined) {
        log('info', `${signal}: already shutting down (since ${stopSignal}); a detached busy mount ends when its last user lets go (SIGKILL ends it now, failing their I/O)`)
        return
      }
      stopSignal = signal
      log('info', `${signal}: unmounting`)
      abort.abort(new Error(`interrupted by ${signal}`))
      stopping?.(signal)
    },
    reconfigure: (signal) => {
      if (options.config === undefined) log('info', `${signal}: no --config file to re-read`)
      else if (daemon === undefined) log('info', `${signal}: not mounted yet; the config is read at start`)
      else {
        log('info', `${signal}: re-reading ${options.config}`)
        daemon.scheduleReconfigure()
      }
    },
    report: (signal) => { log('info', `${signal}: client ${JSON.stringify(client?.stats ?? {})}; fuse ${JSON.stringify(mount?.stats ?? {})}`) }
  })
  // A foreground daemon whose terminal went away must not die of a failed log write.
  process.stderr.on('error', () => {})
  try {
    setIoFlusher()
    log('debug', 'PR_SET_IO_FLUSHER set: memory reclaim here does not wait on the I/O we serve')
  } catch (err) {
    log(process.geteuid?.() === 0 ? 'warn' : 'info', `PR_SET_IO_FLUSHER not set (${(err as Error).message}): a loop device over this mount may deadlock under memory pressure`)
  }

  try {
    // Taken first: a live daemon's pidfile refuses the start before anything is touched.
    pidfile = options.pidfile === undefined ? undefined : Pidfile.acquire(options.pidfile)
    await cleanStaleMount(target, log)
    client = await NbdClient.connect(uri, {
      reconnectDelay: settings.reconnectDelay,
      openTimeout: settings.openTimeout,
      maxInFlight: settings.maxInFlight,
      connections: options.connections,
      ...tlsClientOptions(options),
      signal: abort.signal
    })
    client.on('state', (c) => {
      const expected = c.to === 'CONNECTED' || c.reason.startsWith('client closed')
      log(expected ? 'info' : 'warn', `connection ${c.connection + 1}: ${c.from} → ${c.to} (${c.reason})`)
    })
    log('info', `connected to ${uri}: ${client.size} bytes, ${client.info.mode} replies`)
    mount = await FuseMount.mount({ client, path: target, name: options.name, readonly: options.readonly === true, options: options.options ?? [], log })
    const lock = new ConfigLock()
    daemon = new DaemonControl({
      uri,
      client,
      mount,
      settings,
      setLogLevel: (level) => { log.level = level },
      configFile: options.config,
      requestShutdown: (why) => { stopping?.(why) },
      log
    }, lock)
    const socketPath = options.controlSocket ?? defaultControlSocket(target)
    if (options.controlSocket === undefined && process.geteuid?.() !== 0) ensurePrivateDir(path.dirname(socketPath))
    control = await ControlServer.listen({ path: socketPath, run: daemon.run, lock, timeoutMs: settings.controlTimeout, log })
    daemon.server = control
    log('info', `control socket: ${socketPath}`)
    pidfile?.write()
    ready(`ready ${process.pid} ${mount.file}`)
    log('info', `ready: ${mount.file}`)
  } catch (err) {
    const message = describeError(err)
    log('error', message)
    ready(`error ${message}`)
    await control?.close().catch(() => {})
    await mount?.unmount().catch(() => {})
    await client?.close().catch(() => {})
    pidfile?.release()
    untrap()
    if (options.readyFd === undefined) throw err
    return 1
  }

  const why = await Promise.race([stopped, mount.closed])
  log('info', `shutting down: ${why}`)
  // The control socket stays while a busy mount is served after detaching.
  await mount.unmount()
  await control.close().catch((err: unknown) => { log('warn', `control socket: ${describeError(err)}`) })
  await client.close().catch((err: unknown) => { log('warn', `disconnect: ${describeError(err)}`) })
  pidfile?.release()
  log('info', `stopped; client ${JSON.stringify(client.stats)}; fuse ${JSON.stringify(mount.stats)}`)
  untrap()
  return 0
}

export interface UmountOptions {
  /** Detach even when busy; the daemon serves the open files until they close. */
  readonly lazy?: boolean
  /** When busy, abort the FUSE connection: I/O in progress and later fails. */
  readonly force?: boolean
  /** How long to wait for the daemon to flush and exit, ms. @default 60000 */
  readonly timeoutMs?: number
}

/**
 * `nbdts umount FILE`: unmounts (the kernel refuses a busy mount, and then nothing changed),
 * then waits for the daemon to see its device end, flush and exit. A stale mount is detached.
 */
export async function runUmount (file: string, options: UmountOptions, io: Io): Promise<number> {
  const target = path.resolve(file)
  const entry = nbdtsMountAt(target)
  if (entry === undefined) throw new MountError('not-mounted', `${target} is not an nbdts mount`)
  // Checked before anything touches the mount: one whose source lies may be served by someone
  // who never answers, so another user's mount is never asked anything (mountState).
  const daemon = verifyDaemon(entry)
  if (mountState(entry) === 'stale') {
    await unmount(target, { lazy: true })
    io.out(`${target}: removed a stale mount (its daemon was gone)`)
    return 0
  }
  let forced = false
  try {
    await unmount(target, { lazy: options.lazy === true })
  } catch (err) {
    if (!(err instanceof MountError) || err.reason !== 'busy') throw err
    if (options.force !== true) {
      throw new MountError('busy', `${target} is busy (${describeHolders(target, target)}), so it stays mounted. ` +
        'nbdts umount --lazy detaches it and the daemon serves it until the last user lets go; --force aborts its I/O')
    }
    await unmount(target, { force: true, lazy: true })
    forced = true
  }
  const who = 'pid' in daemon ? `the daemon (pid ${daemon.pid})` : 'its daemon'
  if (options.lazy === true) {
    io.out(`${target}: detached; ${who} serves it until the last user lets go, then flushes and exits`)
    return 0
  }
  if ('problem' in daemon) {
    io.out(`${target}: unmounted (its daemon was not waited for: ${daemon.problem})`)
    return 0
  }
  const timeoutMs = options.timeoutMs ?? 60_000
  const deadline = Date.now() + timeoutMs
  while (processExists(daemon.pid)) {
    if (Date.now() > deadline) {
      io.out(`${target}: unmounted; ${who} is still finishing (flushing) after ${timeoutMs} ms`)
      return 0
    }
    await sleep(20)
  }
  io.out(`${target}: unmounted${forced ? ' (forced: its I/O was aborted)' : ''}`)
  return 0
}
