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
 * SIGINT/SIGTERM: finish in-flight I/O, FLUSH, unmount, disconnect, exit 0.
 */
import { spawn } from 'node:child_process'
import { closeSync, statSync, writeSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { NbdClient } from '../client/nbd-client.ts'
import { describeError } from '../errors.ts'
import { ConfigLock, ControlServer, DaemonControl, parseConfigFile, readConfigFile, type Settings } from '../control/index.ts'
import { FuseMount, cleanStaleMount } from '../fuse/fuse-mount.ts'
import { daemonPid, isStale, nbdtsMountAt, unmount } from '../fuse/mount-table.ts'
import { parseNbdUri } from '../protocol/uri.ts'
import { Pidfile } from '../util/safe-file.ts'
import { createLogger, type LogLevel } from './logger.ts'
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
  readonly readyFd?: number
  readonly config?: string
  /** ms */
  readonly controlTimeout: number
  /** Option names given on the command line (they win over the config file). */
  readonly explicit: ReadonlySet<string>
}

/** Where a mount's control socket lives unless --control-socket says otherwise. */
export const CONTROL_DIR = '/run/nbdts'

export function defaultControlSocket (target: string): string {
  const name = path.resolve(target).slice(1).replace(/\//g, '-').replace(/[^A-Za-z0-9_.-]/g, '_')
  return path.join(CONTROL_DIR, `${name}.sock`)
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
  const onSignal = (signal: NodeJS.Signals): void => {
    log('info', `${signal}: unmounting`)
    abort.abort(new Error(`interrupted by ${signal}`))
    stopping?.(signal)
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)

  let client: NbdClient | undefined
  let mount: FuseMount | undefined
  let control: ControlServer | undefined
  let pidfile: Pidfile | undefined
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
    mount = await FuseMount.mount({ client, path: target, name: options.name, readonly: options.readonly === true, log })
    const lock = new ConfigLock()
    const daemon = new DaemonControl({
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
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    if (options.readyFd === undefined) throw err
    return 1
  }

  const why = await Promise.race([stopped, mount.closed])
  log('info', `shutting down: ${why}`)
  await control.close().catch((err: unknown) => { log('warn', `control socket: ${describeError(err)}`) })
  await mount.unmount()
  await client.close().catch((err: unknown) => { log('warn', `disconnect: ${describeError(err)}`) })
  pidfile?.release()
  log('info', `stopped; client ${JSON.stringify(client.stats)}; fuse ${JSON.stringify(mount.stats)}`)
  process.off('SIGINT', onSignal)
  process.off('SIGTERM', onSignal)
  return 0
}

/**
 * `nbdts umount FILE`: asks the daemon to shut down (it flushes, then unmounts) and waits for
 * the mount to go. A stale mount is detached; --lazy detaches at once even when busy.
 */
export async function runUmount (file: string, options: { lazy?: boolean, timeoutMs?: number }, io: Io): Promise<number> {
  const target = path.resolve(file)
  const entry = nbdtsMountAt(target)
  if (entry === undefined) throw new Error(`${target} is not an nbdts mount`)
  if (isStale(target)) {
    await unmount(target, true)
    io.out(`${target}: removed a stale mount (its daemon was gone)`)
    return 0
  }
  if (options.lazy === true) {
    await unmount(target, true)
    io.out(`${target}: detached`)
    return 0
  }
  const pid = daemonPid(entry)
  if (pid === undefined) {
    await unmount(target)
  } else {
    process.kill(pid, 'SIGTERM')
    const deadline = Date.now() + (options.timeoutMs ?? 60_000)
    while (nbdtsMountAt(target) !== undefined) {
      if (Date.now() > deadline) throw new Error(`${target} is still mounted after ${options.timeoutMs ?? 60_000} ms (busy? nbdts umount --lazy detaches it now)`)
      await sleep(50)
    }
  }
  io.out(`${target}: unmounted`)
  return 0
}
