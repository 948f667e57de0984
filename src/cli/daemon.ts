/**
 * `nbdts daemon`: one process for any number of mounts, managed over its control socket
 * (default /run/nbdts/nbdts.sock) and its config file, as multipathd manages its maps. Also
 * the process behind a standalone `nbdts mount` (a daemon with that one mount, which stops
 * when the mount is gone).
 *
 *   detach (default) ─► the same command with --foreground --ready-fd 3 (detach.ts)
 *   --foreground     ─► signals ─► PR_SET_IO_FLUSHER ─► pidfile (locked) ─► Daemon.start
 *                       (config, control socket, metrics) ─► mounts start ─► pidfile written
 *                       ─► "ready" ─► ... ─► stopped ─► pidfile released
 *
 * Signals, as multipathd: SIGHUP reconfigures, SIGUSR1/2 log the counters, SIGPIPE is ignored,
 * every terminating signal shuts down lazily (a busy mount is detached and served until its
 * last user lets go: a signal cannot be refused).
 */
import { lstatSync, mkdirSync } from 'node:fs'
import path from 'node:path'
import type { DaemonSettings } from '../control/words.ts'
import { Daemon, type InitialMount } from '../daemon/daemon.ts'
import { parseListen } from '../daemon/metrics.ts'
import { describeError } from '../errors.ts'
import { setIoFlusher } from '../util/libc.ts'
import { Pidfile } from '../util/safe-file.ts'
import { detach, readyReporter } from './detach.ts'
import { createLogger, type LogLevel } from './logger.ts'
import { trapSignals } from './signals.ts'
import { daemonSocket } from './socket-paths.ts'

export { CONTROL_DIR, controlDir, daemonSocket } from './socket-paths.ts'

/**
 * A user's control directory must be theirs alone: in /tmp, another user could have made it
 * first and would then own the socket's neighbourhood.
 */
export function ensurePrivateDir (dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  const st = lstatSync(dir)
  const uid = process.geteuid?.() ?? 0
  if (!st.isDirectory() || st.uid !== uid || (st.mode & 0o077) !== 0) {
    throw new Error(`${dir} is not a private directory of uid ${uid} (owner ${st.uid}, mode ${(st.mode & 0o7777).toString(8)}): remove it, or give --control-socket`)
  }
}

export interface DaemonProcessOptions {
  readonly controlSocket: string
  /** The socket is in the default place: a user other than root needs it private. */
  readonly defaultSocket: boolean
  readonly config?: string | undefined
  readonly pidfile?: string | undefined
  readonly logFile?: string | undefined
  readonly logLevel: LogLevel
  /** Daemon settings given on the command line (they win over the config's [daemon]). */
  readonly settings: Partial<DaemonSettings>
  readonly metricsListen?: string | undefined
  readonly readyFd?: number | undefined
  /** `nbdts mount`: its one mount; the daemon stops when it is gone. */
  readonly mount?: InitialMount
}

/** The daemon in this process; resolves with the exit code once it has stopped. */
export async function serveDaemon (options: DaemonProcessOptions): Promise<number> {
  const log = createLogger(options.logLevel, options.logFile)
  const ready = readyReporter(options.readyFd)
  let daemon: Daemon | undefined
  let stopSignal: string | undefined
  const untrap = trapSignals({
    stop: (signal) => {
      if (stopSignal !== undefined) {
        log('info', `${signal}: already shutting down (since ${stopSignal}); a detached busy mount ends when its last user lets go (SIGKILL ends it now, failing their I/O)`)
        return
      }
      stopSignal = signal
      log('info', `${signal}: unmounting`)
      void daemon?.shutdown('lazy', signal)
    },
    reconfigure: (signal) => {
      if (options.config === undefined) log('info', `${signal}: no --config file to re-read`)
      else if (daemon === undefined) log('info', `${signal}: not started yet; the config is read at start`)
      else {
        log('info', `${signal}: re-reading ${options.config}`)
        daemon.scheduleReconfigure()
      }
    },
    report: (signal) => {
      for (const m of daemon?.mounts.values() ?? []) log('info', `${signal}: client ${JSON.stringify(m.client?.stats() ?? {})}; fuse ${JSON.stringify(m.mount?.stats ?? {})}; mount ${m.file} (${m.state})`)
    }
  })
  // A foreground daemon whose terminal went away must not die of a failed log write.
  process.stderr.on('error', () => {})
  try {
    setIoFlusher()
    log('debug', 'PR_SET_IO_FLUSHER set: memory reclaim here does not wait on the I/O we serve')
  } catch (err) {
    log(process.geteuid?.() === 0 ? 'warn' : 'info', `PR_SET_IO_FLUSHER not set (${(err as Error).message}): a loop device over ${options.mount === undefined ? 'one of its mounts' : 'this mount'} may deadlock under memory pressure`)
  }

  let pidfile: Pidfile | undefined
  try {
    // Taken first: a live daemon's pidfile refuses the start before anything is touched.
    pidfile = options.pidfile === undefined ? undefined : Pidfile.acquire(options.pidfile)
    if (options.defaultSocket && process.geteuid?.() !== 0) ensurePrivateDir(path.dirname(options.controlSocket))
    daemon = await Daemon.start({
      controlSocket: options.controlSocket,
      configFile: options.config,
      log,
      settings: options.settings,
      metricsListen: options.metricsListen === undefined ? undefined : parseListen(options.metricsListen),
      ...(options.mount !== undefined && { mounts: [options.mount], exitWhenEmpty: true })
    })
    log('info', `control socket: ${options.controlSocket}`)
    if (stopSignal !== undefined) void daemon.shutdown('lazy', stopSignal)
    await daemon.startMounts()
    if (options.mount !== undefined) {
      const runtime = daemon.mounts.get(options.mount.file)
      if (runtime?.state !== 'up') throw new Error(runtime?.lastError ?? stopSignal ?? 'the mount is gone')
    }
    pidfile?.write()
    const mountFile = options.mount === undefined ? undefined : daemon.mounts.get(options.mount.file)?.mount?.file
    ready(`ready ${process.pid} ${mountFile ?? daemon.summary()}`)
    log('info', `ready: ${mountFile ?? daemon.summary()}`)
  } catch (err) {
    const message = describeError(err)
    log('error', message)
    ready(`error ${message}`)
    if (daemon !== undefined) {
      await daemon.shutdown('force', message)
      await daemon.stopped
    }
    pidfile?.release()
    untrap()
    if (options.readyFd === undefined) throw err
    return 1
  }
  await daemon.stopped
  pidfile?.release()
  untrap()
  return 0
}

export interface DaemonCommandOptions {
  readonly controlSocket?: string
  readonly config?: string
  readonly foreground?: boolean
  readonly pidfile?: string
  readonly logLevel: LogLevel
  readonly logFile?: string
  readonly controlTimeout: number
  readonly metricsListen?: string
  readonly readyFd?: number
  /** Option names given on the command line. */
  readonly explicit: ReadonlySet<string>
}

/** `nbdts daemon`. */
export async function runDaemon (options: DaemonCommandOptions, io: { out: (text: string) => void }): Promise<number> {
  const controlSocket = options.controlSocket === undefined ? daemonSocket() : path.resolve(options.controlSocket)
  if (options.metricsListen !== undefined) parseListen(options.metricsListen)
  if (options.foreground !== true) {
    // Everything resolved, so the daemon (and `nbdts umount`, which reads its command line) agrees on paths.
    const args = ['daemon', '--control-socket', controlSocket]
    if (options.config !== undefined) args.push('--config', path.resolve(options.config))
    if (options.pidfile !== undefined) args.push('--pidfile', path.resolve(options.pidfile))
    if (options.logFile !== undefined) args.push('--log-file', path.resolve(options.logFile))
    if (options.explicit.has('logLevel')) args.push('--log-level', options.logLevel)
    if (options.explicit.has('controlTimeout')) args.push('--control-timeout', `${options.controlTimeout}ms`)
    if (options.metricsListen !== undefined) args.push('--metrics-listen', options.metricsListen)
    const [pid, ...summary] = await detach(args)
    io.out(`nbdts daemon running (pid ${pid}, ${summary.join(' ')}); control socket ${controlSocket}`)
    return 0
  }
  const settings: Partial<DaemonSettings> = {
    ...(options.explicit.has('logLevel') && { logLevel: options.logLevel }),
    ...(options.explicit.has('controlTimeout') && { controlTimeout: options.controlTimeout })
  }
  return await serveDaemon({
    controlSocket,
    defaultSocket: options.controlSocket === undefined && process.env.NBDTS_DAEMON_SOCKET === undefined,
    config: options.config,
    pidfile: options.pidfile,
    logFile: options.logFile,
    logLevel: options.logLevel,
    settings,
    metricsListen: options.metricsListen,
    readyFd: options.readyFd
  })
}
