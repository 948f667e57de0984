/**
 * `nbdts mount URI FILE` and `nbdts umount FILE`.
 *
 * How a mount relates to `nbdts daemon`: when a daemon answers on its socket
 * ($NBDTS_DAEMON_SOCKET, else nbdts.sock in the control directory), `nbdts mount` hands the
 * mount to it (`add mount`, then waits until it is up) unless --standalone, --foreground or an
 * option that only a process of its own can have (--pidfile, --control-socket, --config,
 * --log-file) is given. Otherwise it starts its own daemon with that one mount (cli/daemon.ts),
 * which detaches once the mount is ready and stops when it is gone.
 *
 *   nbdts mount ──► daemon answers? ──yes──► add mount URI FILE ... ─► show mount FILE until up
 *                        └──no──► its own daemon: spawn(--foreground --ready-fd 3) ─► "ready"
 *
 * `nbdts umount` unmounts itself (umount(8), or fusermount3 -u): the kernel refuses a busy
 * mount atomically, and then nothing has changed. Once unmounted, the daemon sees its device
 * end, flushes and lets go (a standalone one exits); umount waits for that when the mount's
 * source names a daemon that checks out (daemon-check.ts), and never signals anyone.
 */
import { statSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { ControlConnection, ControlError, controlRequest, joinWords, type PeerTrust } from '../control/index.ts'
import { startServerCommand, type ServerCommand } from '../activation/index.ts'
import { InvalidArgumentError, MountError } from '../errors.ts'
import { mountState, processExists, verifyDaemon } from '../fuse/daemon-check.ts'
import { cleanStaleMount } from '../fuse/fuse-mount.ts'
import { describeHolders } from '../fuse/holders.ts'
import { parseMountOptions } from '../fuse/mount-options.ts'
import { nbdtsMountAt, unmount } from '../fuse/mount-table.ts'
import { parseNbdUri } from '../protocol/uri.ts'
import { describeMountSettings, setMountKey, type MountSettings } from '../control/words.ts'
import { serveDaemon } from './daemon.ts'
import { daemonSocket, defaultControlSocket } from './socket-paths.ts'
import { detach } from './detach.ts'
import type { LogLevel } from './logger.ts'
import { tlsArgs, type TlsFlags } from './tls-options.ts'

export interface MountOptions extends TlsFlags {
  readonly readonly?: boolean
  /** ms */
  readonly reconnectDelay: number
  /** ms */
  readonly openTimeout: number
  readonly maxInFlight: number
  readonly connections: number | 'auto'
  readonly foreground?: boolean
  readonly standalone?: boolean
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
  /** Multipath: the other URIs, and the policy words (as the config file takes them). */
  readonly path?: readonly string[]
  readonly pathSelector?: string
  readonly failback?: string
  readonly pollingInterval?: string
  readonly noPathRetry?: string
  readonly pathIdentity?: string
}

/** The multipath flags, as the settings words they are everywhere (words.ts parses them). */
const MULTIPATH_FLAGS = [
  ['pathSelector', 'path-selector'], ['failback', 'failback'], ['pollingInterval', 'polling-interval'],
  ['noPathRetry', 'no-path-retry'], ['pathIdentity', 'path-identity']
] as const

export { CONTROL_DIR, controlDir, defaultControlSocket } from './socket-paths.ts'

/** The mount's settings as given on the command line (the rest comes from defaults and the config). */
function ownSettings (options: MountOptions): MountSettings {
  const given = (key: string): boolean => options.explicit.has(key)
  const resolved = (file: string | undefined): string | undefined => file === undefined ? undefined : path.resolve(file)
  const own: MountSettings = {}
  if (options.readonly === true) own.readonly = true
  if (given('name')) own.name = options.name
  if ((options.options ?? []).length > 0) own.options = [...options.options!]
  if (given('connections')) own.connections = options.connections
  if (given('reconnectDelay')) own.reconnectDelay = options.reconnectDelay
  if (given('openTimeout')) own.openTimeout = options.openTimeout
  if (given('maxInFlight')) own.maxInFlight = options.maxInFlight
  if (options.tls !== undefined) own.tls = options.tls
  const certificates = resolved(options.tlsCertificates)
  if (certificates !== undefined) own.tlsCertificates = certificates
  const psk = resolved(options.tlsPskFile)
  if (psk !== undefined) own.tlsPskFile = psk
  if (options.tlsUsername !== undefined) own.tlsUsername = options.tlsUsername
  if (options.tlsHostname !== undefined) own.tlsHostname = options.tlsHostname
  if (options.tlsVerifyPeer === false) own.tlsVerifyPeer = false
  if ((options.path ?? []).length > 0) own.paths = [...options.path!]
  for (const [flag, key] of MULTIPATH_FLAGS) {
    const word = options[flag]
    if (word !== undefined) setMountKey(own, key, word)
  }
  return own
}

export interface Io {
  readonly out: (text: string) => void
}

/**
 * `source`: a URI, or `[ CMD ... ]`'s words: a server for this mount alone, as nbdfuse runs one.
 * Such a mount always has a process of its own (the server is its child, in a session of its
 * own, stopped once the mount has flushed), never a running daemon's: it would run the command
 * as itself, outlive the shell that asked, and own a server nobody configured.
 */
export async function runMount (source: string | readonly string[], file: string, options: MountOptions, io: Io): Promise<number> {
  if (typeof source === 'string') parseNbdUri(source)
  else if ((options.path ?? []).length > 0) throw new InvalidArgumentError('--path needs a URI as path 1, not [ CMD ]: a server run for one mount is no shared storage')
  // Checked here, so a bad -o is a usage error before anything starts.
  parseMountOptions(options.options ?? [])
  const target = path.resolve(file)
  const ownProcess = options.standalone === true || options.foreground === true || options.pidfile !== undefined ||
    options.controlSocket !== undefined || options.config !== undefined || options.logFile !== undefined
  if (typeof source === 'string' && !ownProcess) {
    const daemon = await connectDaemon()
    if (daemon !== undefined) return await mountThroughDaemon(daemon, source, target, options, io)
  }
  if (options.foreground !== true) return await detachMount(source, target, options, io)
  if (typeof source === 'string') return await serveMount(source, target, options, undefined)
  const server = await startServerCommand(source, { ownSession: true })
  try {
    return await serveMount(server.uri, target, options, server)
  } finally {
    await server.stop()
  }
}

/** The mount's own daemon, in this process. */
async function serveMount (uri: string, target: string, options: MountOptions, server: ServerCommand | undefined): Promise<number> {
  return await serveDaemon({
    controlSocket: options.controlSocket ?? defaultControlSocket(target),
    defaultSocket: options.controlSocket === undefined,
    config: options.config,
    pidfile: options.pidfile,
    logFile: options.logFile,
    logLevel: options.logLevel,
    settings: {
      ...(options.explicit.has('logLevel') && { logLevel: options.logLevel }),
      ...(options.explicit.has('controlTimeout') && { controlTimeout: options.controlTimeout })
    },
    readyFd: options.readyFd,
    mount: { uri, file: target, own: ownSettings(options), ...(server !== undefined && { server }) }
  })
}

/**
 * The running daemon's connection, or undefined when none answers on its socket. One we may
 * not trust (another user's socket or directory: trusted-peer.ts) is an error, not a reason to
 * start our own daemon there.
 */
async function connectDaemon (): Promise<ControlConnection | undefined> {
  try {
    return await ControlConnection.connect(daemonSocket(), 2000)
  } catch (err) {
    if (err instanceof ControlError && err.code === 'CTL_UNTRUSTED') throw err
    return undefined
  }
}

/** `add mount` on the daemon, then wait (as a standalone mount does) until it is up or failed. */
async function mountThroughDaemon (daemon: ControlConnection, uri: string, target: string, options: MountOptions, io: Io): Promise<number> {
  try {
    const words = ['add', 'mount', uri, target]
    for (const [key, value] of ownSettingWords(ownSettings(options))) words.push(key, value)
    const added = await daemon.request(joinWords(words))
    if (!added.ok) throw new Error(`the daemon on ${daemonSocket()} refused: ${added.text}`)
    const deadline = Date.now() + options.openTimeout + 60_000
    for (;;) {
      const reply = await daemon.request(joinWords(['show', 'mount', target, 'status', 'json']))
      const status = reply.ok ? JSON.parse(reply.text) as { state: string, export?: string, error?: string } : { state: 'gone', error: reply.text }
      if (status.state === 'up') {
        io.out(`mounted ${uri} at ${status.export ?? target} (by the nbdts daemon on ${daemonSocket()})`)
        return 0
      }
      if (status.state !== 'starting') throw new Error(status.error ?? `the mount is ${status.state}`)
      if (Date.now() > deadline) throw new Error(`the daemon is still starting ${target}; see nbdts ctl show mount ${target}`)
      await sleep(50)
    }
  } finally {
    daemon.close()
  }
}

/** MountSettings as `add mount` words (a key may come more than once: paths). */
function ownSettingWords (own: MountSettings): Array<[string, string]> {
  const words: Record<string, string> = {}
  if (own.readonly !== undefined) words.readonly = own.readonly ? 'yes' : 'no'
  if (own.name !== undefined) words.name = own.name
  if (own.options !== undefined) words.options = own.options.join(',')
  if (own.connections !== undefined) words.connections = String(own.connections)
  if (own.reconnectDelay !== undefined) words['reconnect-delay'] = `${own.reconnectDelay}ms`
  if (own.openTimeout !== undefined) words['open-timeout'] = `${own.openTimeout}ms`
  if (own.maxInFlight !== undefined) words['max-in-flight'] = String(own.maxInFlight)
  if (own.tls !== undefined) words.tls = own.tls
  if (own.tlsCertificates !== undefined) words['tls-certificates'] = own.tlsCertificates
  if (own.tlsPskFile !== undefined) words['tls-psk-file'] = own.tlsPskFile
  if (own.tlsUsername !== undefined) words['tls-username'] = own.tlsUsername
  if (own.tlsHostname !== undefined) words['tls-hostname'] = own.tlsHostname
  if (own.tlsVerifyPeer !== undefined) words['tls-verify-peer'] = own.tlsVerifyPeer ? 'yes' : 'no'
  const described = describeMountSettings(own)
  for (const key of ['path-selector', 'failback', 'polling-interval', 'path-identity'] as const) {
    if (described[key] !== undefined) words[key] = String(described[key])
  }
  return [...Object.entries(words), ...(own.paths ?? []).map((p): [string, string] => ['paths', p])]
}

/** Starts the mount's own daemon and waits for it to be ready. */
async function detachMount (source: string | readonly string[], target: string, options: MountOptions, io: Io): Promise<number> {
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
  const what = typeof source === 'string' ? [source] : ['[', ...source, ']']
  const args = ['mount', ...what, target, '--standalone', '--connections', String(options.connections), '--name', options.name, ...tlsArgs(options)]
  const given = (key: string): boolean => options.explicit.has(key)
  if (given('reconnectDelay')) args.push('--reconnect-delay', `${options.reconnectDelay}ms`)
  if (given('openTimeout')) args.push('--open-timeout', `${options.openTimeout}ms`)
  if (given('maxInFlight')) args.push('--max-in-flight', String(options.maxInFlight))
  if (given('logLevel')) args.push('--log-level', options.logLevel)
  if (given('controlTimeout')) args.push('--control-timeout', `${options.controlTimeout}ms`)
  if (options.readonly === true) args.push('--readonly')
  for (const o of options.options ?? []) args.push('-o', o)
  for (const p of options.path ?? []) args.push('--path', p)
  for (const [flag] of MULTIPATH_FLAGS) {
    const word = options[flag]
    if (word !== undefined) args.push(`--${flag.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`, word)
  }
  if (options.pidfile !== undefined) args.push('--pidfile', path.resolve(options.pidfile))
  if (options.controlSocket !== undefined) args.push('--control-socket', path.resolve(options.controlSocket))
  if (options.logFile !== undefined) args.push('--log-file', path.resolve(options.logFile))
  if (options.config !== undefined) args.push('--config', path.resolve(options.config))
  const [pid, exportFile] = await detach(args)
  io.out(`mounted ${typeof source === 'string' ? source : `[ ${source.join(' ')} ]`} at ${exportFile ?? target} (daemon pid ${pid})`)
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
  // Forced means nothing waits for an absent server: a verified daemon is told so (del mount
  // force: no waiting FLUSH, its client destroyed), else it would take an unmount from outside
  // for a normal one and wait the reconnect delay to flush.
  if (options.force === true && 'pid' in daemon && await askedToForce(socketOf(daemon.args, target), target, { uids: [0, processOwner(daemon.pid)], pid: daemon.pid })) {
    forced = true
  }
  if (!forced) {
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
  }
  const who = 'pid' in daemon ? `the daemon (pid ${daemon.pid})` : 'its daemon'
  if (options.lazy === true) {
    io.out(`${target}: detached; ${who} serves it until the last user lets go, then flushes${'pid' in daemon && isMultiMount(daemon.args) ? ' and lets it go' : ' and exits'}`)
    return 0
  }
  if ('problem' in daemon) {
    io.out(`${target}: unmounted (its daemon was not waited for: ${daemon.problem})`)
    return 0
  }
  // A forced daemon waits for nobody: seconds, or something is wrong and the user should hear.
  const timeoutMs = options.timeoutMs ?? (options.force === true ? 10_000 : 60_000)
  const deadline = Date.now() + timeoutMs
  const done = `${target}: unmounted${forced ? ' (forced: its I/O was aborted)' : ''}`
  if (isMultiMount(daemon.args)) {
    // An nbdts daemon serves other mounts too: it does not exit, it lets this one go.
    // The socket is named on the daemon's command line, which its user wrote: only the verified
    // daemon itself is asked (SO_PEERCRED pid), and only whether it still holds the mount.
    const socket = socketOf(daemon.args, target)
    const trust = { uids: [0, processOwner(daemon.pid)], pid: daemon.pid }
    while (await daemonHolds(socket, target, trust)) {
      if (Date.now() > deadline) {
        io.out(`${target}: unmounted; ${who} is still finishing it (${forced ? 'forced' : 'flushing'}) after ${timeoutMs} ms`)
        return 0
      }
      await sleep(20)
    }
    io.out(done)
    return 0
  }
  while (processExists(daemon.pid)) {
    if (Date.now() > deadline) {
      io.out(`${target}: unmounted; ${who} is still finishing (${forced ? 'forced' : 'flushing'}) after ${timeoutMs} ms`)
      return 0
    }
    await sleep(20)
  }
  io.out(done)
  return 0
}

function processOwner (pid: number): number {
  try {
    return statSync(`/proc/${pid}`).uid
  } catch {
    return 0
  }
}

/** `nbdts daemon` (many mounts) rather than a standalone `nbdts mount`. */
function isMultiMount (args: readonly string[]): boolean {
  return args.includes('daemon') && !args.includes('mount')
}

/** The daemon's control socket: its --control-socket, else the default for what it is. */
function socketOf (args: readonly string[], target: string): string {
  const at = args.indexOf('--control-socket')
  if (at >= 0 && args[at + 1] !== undefined) return args[at + 1]!
  return isMultiMount(args) ? daemonSocket() : defaultControlSocket(target)
}

/** `del mount TARGET force` on the daemon; false when it cannot be asked or refuses. */
async function askedToForce (socket: string, target: string, trust: PeerTrust): Promise<boolean> {
  try {
    return (await controlRequest(socket, joinWords(['del', 'mount', target, 'force']), 2000, trust)).ok
  } catch {
    return false
  }
}

/** Whether the daemon on `socket` still lists `target` (false when it cannot be asked). */
async function daemonHolds (socket: string, target: string, trust: PeerTrust): Promise<boolean> {
  try {
    const reply = await controlRequest(socket, joinWords(['show', 'mount', target, 'status', 'json']), 2000, trust)
    return reply.ok
  } catch {
    return false
  }
}
