/**
 * One mount inside the daemon: its client, its FUSE mount, its counters, and its life.
 *
 *              connect + mount ok                remove(mode)             unmounted, flushed,
 *   STARTING ───────────────────► UP ──────────────────────────► REMOVING ──► client closed ──► (gone)
 *      │ failed (reason kept)      │ ▲ busy and mode = refuse:        │
 *      ▼                           │ └── back to UP, reason kept ─────┘
 *   FAILED ── remove() ──► (gone)  └── unmounted from outside (nbdts umount, umount) ──► flushed ──► (gone)
 *
 * Everything here runs in the background of the control socket: the registry starts a remove
 * and answers; `gone` settles when it is over. A remove during STARTING aborts the connect.
 */
import type { ServerCommand } from '../activation/index.ts'
import { NbdClient, type StateChange } from '../client/nbd-client.ts'
import { givenTls } from '../client/options.ts'
import type { PathChange } from '../multipath/index.ts'
import type { TeardownMode } from '../control/grammar.ts'
import { describeMountSettings, type MountSettings } from '../control/words.ts'
import { describeError, MountError, publicError } from '../errors.ts'
import { FuseMount } from '../fuse/fuse-mount.ts'
import type { LogFn } from '../fuse/log.ts'
import type { ResolvedMountSettings } from './config.ts'
import { LatencyWindow, RateSampler } from './io-stats.ts'
import { timedClient, type TimedCommand } from './timed-client.ts'

export type MountState = 'starting' | 'up' | 'failed' | 'removing'
/** Where a mount came from: the config file, `add mount` on the control socket, `nbdts mount`. */
export type MountOrigin = 'config' | 'ctl' | 'command line'

/**
 * A mount's replay ring (the write ledger's copies of acknowledged writes no FLUSH covered
 * yet, write-ledger.ts): 16 MiB, half the library's default, since the daemon's peak memory
 * holds all of it (bench/mount-memory.ts: peak RSS ~16 MiB lower). What it costs: the ledger
 * asks for a FLUSH once half the ring is taken, so FLUSHes come about twice as often under a
 * stream of writes (1 GiB of 1 MiB writes at QD 16: ~135 NBD FLUSHes instead of 65–90), and a
 * write acknowledged while the ring is full keeps its FUSE request (and its request slot)
 * until a FLUSH covers it: on storage where a FLUSH is slow, large writes wait for it. 8 MiB
 * saved ~5 MiB more for twice the FLUSHes again (~300; 4 MiB: ~500): not taken.
 */
const MOUNT_REPLAY_LOG = 16 * 1024 * 1024

export interface MountRuntimeOptions {
  readonly uri: string
  readonly file: string
  /** What was given for this mount itself (a section, add mount's words, flags). */
  readonly own: MountSettings
  readonly settings: ResolvedMountSettings
  readonly origin: MountOrigin
  readonly log: LogFn
  /** Each timed request, for the metrics' histogram (seconds). */
  readonly observe?: (command: TimedCommand, seconds: number, ok: boolean) => void
  /**
   * `nbdts mount [ CMD ... ] FILE`: the server this mount runs, on a private socket. The mount
   * owns it: it is stopped once the mount is gone, and never restarted (a new `nbdkit memory`
   * would be another, empty disk), so once it exits I/O fails at once.
   */
  readonly server?: ServerCommand
}

export class MountRuntime {
  readonly uri: string
  readonly file: string
  origin: MountOrigin
  own: MountSettings
  settings: ResolvedMountSettings
  state: MountState = 'starting'
  /** Why it failed, or why the last remove was refused. */
  lastError: string | undefined
  /** lastError as users other than root see it: class and code only (publicError). */
  lastPublicError: string | undefined
  readonly startedAt = Date.now()
  readonly latency = new LatencyWindow()
  readonly rates = new RateSampler()
  /** Timed requests that failed. */
  failedRequests = 0
  /** Settles once starting is over (up or failed); never rejects. */
  readonly started: Promise<void>
  /** Settles once the mount is gone for good; never rejects. */
  readonly gone: Promise<void>
  /** Called once, when gone. */
  onGone: (() => void) | null = null
  /** Why it went: 'unmounted' (from outside), 'removed', or the failure. */
  goneReason = 'removed'

  #client: NbdClient | undefined
  #mount: FuseMount | undefined
  readonly #abort = new AbortController()
  readonly #log: LogFn
  readonly #observe: MountRuntimeOptions['observe']
  #markGone!: () => void
  #removing: Promise<void> | null = null
  #untrack: (() => void) | undefined
  readonly #server: ServerCommand | undefined
  /** The server was stopped by us (its exit is no news). */
  #stopped = false
  /** The server command exited: no wait for it makes sense any more, whatever is set. */
  #serverGone = false

  constructor (options: MountRuntimeOptions) {
    this.uri = options.uri
    this.file = options.file
    this.origin = options.origin
    this.own = options.own
    this.settings = options.settings
    this.#observe = options.observe
    this.#server = options.server
    const file = options.file
    this.#log = (level, message) => { options.log(level, message.startsWith(file) ? message : `${file}: ${message}`) }
    this.gone = new Promise((resolve) => { this.#markGone = resolve })
    this.started = this.#start()
  }

  get client (): NbdClient | undefined {
    return this.#client
  }

  get mount (): FuseMount | undefined {
    return this.#mount
  }

  async #start (): Promise<void> {
    const s = this.settings
    const server = this.#server
    if (server !== undefined) {
      void server.exited.then((status) => {
        if (this.#stopped) return
        this.#serverGone = true
        const how = status.signal !== null ? `was killed by ${status.signal}` : `exited with code ${status.code}`
        const last = server.stderrTail().trim().split('\n').slice(-2).join('; ')
        this.#log('error', `the server command (pid ${server.child.pid}) ${how}${last === '' ? '' : ` (${last})`}: nothing serves this export any more, so its I/O fails from now on; nbdts umount ends the mount`)
        const client = this.#client
        if (client !== undefined) {
          client.reconnectDelay = 0
          client.cancelInFlight()
        }
      })
    }
    try {
      const client = await NbdClient.connect(this.uri, {
        ...(server !== undefined && { open: server.open }),
        reconnectDelay: s.reconnectDelay,
        openTimeout: s.openTimeout,
        maxInFlight: s.maxInFlight,
        connections: s.connections,
        replayLog: MOUNT_REPLAY_LOG,
        // Only root may add a mount, and the URI is root's own: it may name local files.
        allowLocalFile: true,
        ...givenTls(s),
        ...(s.paths !== undefined && s.paths.length > 0 && {
          paths: s.paths,
          ...(s.pathSelector !== undefined && { pathSelector: s.pathSelector }),
          ...(s.failback !== undefined && { failback: s.failback }),
          ...(s.pollingInterval !== undefined && { pollingInterval: s.pollingInterval }),
          ...(s.pathIdentity !== undefined && { pathIdentity: s.pathIdentity })
        }),
        signal: this.#abort.signal
      })
      this.#client = client
      this.#log('info', `connected to ${this.uri}: ${client.sizeBigInt} bytes, ${client.info.mode} replies${client.info.tls ? ', TLS' : ''}`)
      const onState = (c: StateChange): void => {
        const expected = c.to === 'CONNECTED' || c.reason.startsWith('client closed')
        this.#log(expected ? 'info' : 'warn', `connection ${c.connection} of ${c.connections}: ${c.from} → ${c.to} (${c.reason})`)
      }
      const onPath = (c: PathChange): void => {
        this.#log(c.to === 'ready' ? 'info' : 'warn', `path ${c.path}: ${c.from} → ${c.to} (${c.reason})`)
      }
      client.on('state', onState)
      client.on('path', onPath)
      this.#untrack = () => { client.off('state', onState); client.off('path', onPath) }
      this.#abort.signal.throwIfAborted()
      const timed = timedClient(client, (command, ms, ok) => {
        this.latency.record(ms)
        if (!ok) this.failedRequests++
        this.#observe?.(command, ms / 1000, ok)
      })
      this.#mount = await FuseMount.mount({ client: timed, path: this.file, name: s.name, readonly: s.readonly, options: s.options, log: this.#log })
      this.state = 'up'
      this.lastError = undefined
      this.lastPublicError = undefined
      this.#log('info', `up: ${this.uri} (${JSON.stringify(describeMountSettings(s))})`)
      void this.#mount.closed.then((why) => { this.#closedFromOutside(why) })
      if (this.#abort.signal.aborted) this.state = 'removing'
    } catch (err) {
      const explained = server === undefined ? err : await server.explain(err)
      this.lastError = describeError(explained)
      this.lastPublicError = publicError(explained)
      this.state = 'failed'
      this.#log('error', `failed: ${this.lastError}`)
      await this.#closeClient()
    }
  }

  /** The FUSE side ended without our asking (nbdts umount, umount(8), an abort). */
  #closedFromOutside (why: string): void {
    if (this.state !== 'up') return
    this.goneReason = why
    this.#log('info', `unmounted from outside (${why}); flushing and letting go`)
    this.#removing ??= this.#teardown('refuse')
  }

  /**
   * Drains, flushes and unmounts (the FUSE side's order), then closes the client. A busy
   * mount: `refuse` rejects with a MountError naming the holders and leaves it UP; `lazy`
   * detaches it and serves it until its last user lets go; `force` aborts its I/O.
   */
  remove (mode: TeardownMode): Promise<void> {
    this.#removing ??= this.#teardown(mode)
    return this.#removing
  }

  async #teardown (mode: TeardownMode): Promise<void> {
    if (this.state === 'starting') this.#abort.abort(new Error('removed while starting'))
    await this.started
    const mount = this.#mount
    if (this.state !== 'failed' && mount !== undefined) {
      this.state = 'removing'
      try {
        await mount.unmount({ busy: mode === 'refuse' ? 'refuse' : mode === 'lazy' ? 'detach' : 'force', ...(mode === 'force' && { drainMs: 0 }) })
      } catch (err) {
        this.state = 'up'
        this.lastError = describeError(err)
        this.lastPublicError = publicError(err)
        this.#removing = null
        this.#log('warn', this.lastError)
        throw err
      }
    }
    // Forced: nothing waits for an absent server, so the client is destroyed, not closed
    // (a close lets requests on the wire finish: up to the liveness bound on a hung server).
    await this.#closeClient(mode === 'force')
    if (this.#server !== undefined) {
      this.#stopped = true
      await this.#server.stop()
    }
    if (this.state === 'failed') this.goneReason = this.lastError ?? 'failed'
    this.state = 'removing'
    this.#log('info', `gone; client ${JSON.stringify(this.#client?.stats() ?? {})}; fuse ${JSON.stringify(mount?.stats ?? {})}`)
    this.onGone?.()
    this.#markGone()
  }

  async #closeClient (destroy = false): Promise<void> {
    this.#untrack?.()
    const client = this.#client
    if (client === undefined) return
    if (destroy) {
      client.destroy()
      return
    }
    await client.close().catch((err: unknown) => { this.#log('warn', `disconnect: ${describeError(err)}`) })
  }

  /** Applies what `set` (or a reconfigure) changed that a running mount can take. */
  applyLive (own: MountSettings, settings: ResolvedMountSettings): void {
    this.own = own
    this.settings = settings
    const client = this.#client
    if (client === undefined) return
    client.reconnectDelay = this.#serverGone ? 0 : settings.reconnectDelay
    client.maxInFlight = settings.maxInFlight
    if (settings.failback !== undefined && client.paths().length > 0) client.failback = settings.failback
  }

  /** For the connection commands: the client of an UP mount. */
  requireClient (): NbdClient {
    if (this.state !== 'up' || this.#client === undefined) throw new MountError('not-mounted', `${this.file} is ${this.state}${this.lastError === undefined ? '' : ` (${this.lastError})`}`)
    return this.#client
  }

  /** Once a second: rates and the latency window move on. */
  tick (now: number): void {
    this.latency.tick()
    if (this.#client !== undefined) this.rates.sample(this.#client.stats(), now)
  }
}
