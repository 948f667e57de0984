/**
 * The daemon: many mounts, one control socket, one config, like multipathd with its maps.
 *
 *   start      config read ─► control socket listens ─► metrics ─► every mount starts (in
 *              parallel) ─► all up or failed ─► READY=1 (and the detaching parent is told)
 *   reconfigure (ctl, SIGHUP)   RELOADING=1 ─► under the config lock: read, plan
 *              (reconfigure.ts), launch adds and removes, apply live changes ─► lock released
 *              ─► the adds settle ─► READY=1. Requests meanwhile make one more run.
 *   shutdown   STOPPING=1 ─► every mount drained, flushed, unmounted (in parallel) ─► the
 *              control socket closes ─► stopped
 *
 * Nothing a control command runs waits for a mount's I/O: starts and removals run in the
 * background (MountRuntime) and `show mounts` reads counters. A mount whose server hangs
 * stalls only its own requests.
 */
import type { ServerCommand } from '../activation/index.ts'
import path from 'node:path'
import { ConfigLock, ControlServer } from '../control/index.ts'
import type { TeardownMode } from '../control/grammar.ts'
import { describeMountSettings, type DaemonSettings, type MountSettings } from '../control/words.ts'
import { describeError, InvalidArgumentError, MountError } from '../errors.ts'
import type { LogFn } from '../fuse/log.ts'
import { holdersOf } from '../fuse/holders.ts'
import { parseMountOptions } from '../fuse/mount-options.ts'
import { parseNbdUri } from '../protocol/uri.ts'
import { DaemonCommands } from './commands.ts'
import { ConfigFileError, readConfigFile } from './config-file.ts'
import { DAEMON_DEFAULTS, EMPTY_CONFIG, parseConfig, resolve, type DaemonConfig } from './config.ts'
import { DaemonMetrics, serveMetrics, type MetricsListen, type MetricsServer } from './metrics.ts'
import { MountRuntime, type MountOrigin } from './mount-runtime.ts'
import { SystemdNotifier } from './notify.ts'
import { planReconfigure } from './reconfigure.ts'

export interface DaemonLogger extends LogFn {
  level: DaemonSettings['logLevel']
}

export interface InitialMount {
  readonly uri: string
  readonly file: string
  readonly own: MountSettings
  /** `nbdts mount [ CMD ... ] FILE`: the server the mount owns (its URI is the server's socket). */
  readonly server?: ServerCommand
}

export interface DaemonOptions {
  readonly controlSocket: string
  readonly configFile?: string | undefined
  readonly log: DaemonLogger
  /** The daemon's settings from the command line; the config's [daemon] fills in the rest. */
  readonly settings?: Partial<DaemonSettings>
  readonly metricsListen?: MetricsListen | undefined
  /** `nbdts mount`'s one mount (its flags win over the config's [defaults]). */
  readonly mounts?: readonly InitialMount[]
  /** Stop once the last mount is gone (`nbdts mount`: the daemon is its mount). */
  readonly exitWhenEmpty?: boolean
  readonly env?: NodeJS.ProcessEnv
}

export interface LastReconfigure {
  /** In full, for root. */
  readonly text: string
  /** File or file:line only, for anyone else. */
  readonly public: string
}

export class Daemon {
  readonly mounts = new Map<string, MountRuntime>()
  readonly lock = new ConfigLock()
  readonly startedAt = Date.now()
  readonly configFile: string | undefined
  readonly controlSocket: string
  readonly metrics: DaemonMetrics
  readonly notifier: SystemdNotifier
  readonly metricsListen: DaemonOptions['metricsListen']
  settings: DaemonSettings
  config: DaemonConfig = EMPTY_CONFIG
  control: ControlServer | null = null
  lastReconfigure: LastReconfigure = { text: 'never', public: 'never' }
  reconfigures = 0
  /** Resolves with the reason once the daemon has stopped. */
  readonly stopped: Promise<string>
  readonly #options: DaemonOptions
  readonly #log: DaemonLogger
  readonly #explicit: ReadonlySet<string>
  /** `nbdts mount`: one mount, given on the command line. */
  readonly #standalone: boolean
  #markStopped!: (why: string) => void
  #stopping: Promise<void> | null = null
  #reconfiguring = false
  #again = false
  #ticker: NodeJS.Timeout | null = null
  #http: MetricsServer | null = null

  private constructor (options: DaemonOptions) {
    this.#options = options
    this.#log = options.log
    this.configFile = options.configFile === undefined ? undefined : path.resolve(options.configFile)
    this.controlSocket = options.controlSocket
    this.metricsListen = options.metricsListen
    this.#explicit = new Set(Object.keys(options.settings ?? {}))
    this.#standalone = options.mounts !== undefined
    this.settings = { ...DAEMON_DEFAULTS, ...options.settings }
    this.metrics = new DaemonMetrics(() => this.mounts.values())
    this.notifier = new SystemdNotifier(this.#log, options.env)
    this.stopped = new Promise((resolve) => { this.#markStopped = resolve })
  }

  get log (): DaemonLogger {
    return this.#log
  }

  /**
   * Reads the config and listens on the control socket (and for metrics). A config that cannot
   * be read, or a socket that cannot be listened on, rejects, and nothing is left running.
   * The mounts start with startMounts().
   */
  static async start (options: DaemonOptions): Promise<Daemon> {
    const daemon = new Daemon(options)
    if (daemon.configFile !== undefined) {
      daemon.config = parseConfig(readConfigFile(daemon.configFile), daemon.configFile)
      daemon.#adoptSettings(daemon.config.daemon)
    }
    const commands = new DaemonCommands(daemon)
    try {
      daemon.control = await ControlServer.listen({ path: options.controlSocket, run: commands.run, lock: daemon.lock, timeoutMs: daemon.settings.controlTimeout, log: daemon.#log })
      if (options.metricsListen !== undefined) daemon.#http = await serveMetrics(daemon.metrics, options.metricsListen, (message) => { daemon.#log('warn', message) })
    } catch (err) {
      await daemon.#closeServers()
      throw err
    }
    daemon.#ticker = setInterval(() => {
      const now = Date.now()
      for (const m of daemon.mounts.values()) m.tick(now)
    }, 1000)
    return daemon
  }

  /** Starts the config's mounts (and `nbdts mount`'s), in parallel; resolves once each is up or failed. */
  async startMounts (): Promise<void> {
    const starting: Array<Promise<void>> = []
    // `nbdts mount` takes [daemon], [defaults] and its own file's section, not the others.
    for (const section of this.#standalone ? [] : this.config.mounts.values()) {
      starting.push(this.#launch(section.uri, section.file, section.settings, 'config').started)
    }
    for (const m of this.#options.mounts ?? []) {
      const own = this.config.mounts.get(m.file)?.settings ?? {}
      starting.push(this.#launch(m.uri, m.file, { ...own, ...m.own }, 'command line', m.server).started)
    }
    await Promise.all(starting)
    if (this.#stopping === null) this.notifier.ready(this.summary())
  }

  /** "3 mounts: 2 up, 1 failed". */
  summary (): string {
    const counts = new Map<string, number>()
    for (const m of this.mounts.values()) counts.set(m.state, (counts.get(m.state) ?? 0) + 1)
    const parts = [...counts].map(([state, n]) => `${n} ${state}`)
    return `${this.mounts.size} mount${this.mounts.size === 1 ? '' : 's'}${parts.length === 0 ? '' : `: ${parts.join(', ')}`}`
  }

  #adoptSettings (fromConfig: Partial<DaemonSettings>): void {
    for (const [key, value] of Object.entries(fromConfig) as Array<[keyof DaemonSettings, never]>) {
      if (!this.#explicit.has(key)) this.settings[key] = value
    }
    this.applySettings()
  }

  /** After settings changed: the logger and the control socket take them. */
  applySettings (): void {
    this.#log.level = this.settings.logLevel
    if (this.control !== null) this.control.timeoutMs = this.settings.controlTimeout
  }

  /** Starts a mount in the background (the registry keeps it from now on). */
  #launch (uri: string, file: string, own: MountSettings, origin: MountOrigin, server?: ServerCommand): MountRuntime {
    const observe = this.metrics.observer(file)
    const runtime = new MountRuntime({ uri, file, own, settings: resolve(this.config.defaults, own), origin, log: this.#log, observe, ...(server !== undefined && { server }) })
    this.mounts.set(file, runtime)
    runtime.onGone = () => {
      if (this.mounts.get(file) === runtime) this.mounts.delete(file)
      if (!this.mounts.has(file)) this.metrics.forget(file)
      this.notifier.status(this.summary())
      if (this.#options.exitWhenEmpty === true && this.mounts.size === 0) void this.shutdown('lazy', runtime.goneReason)
    }
    void runtime.started.then(() => {
      if (this.#options.exitWhenEmpty === true && runtime.state === 'failed') void this.shutdown('lazy', `the mount failed: ${runtime.lastError ?? ''}`)
      this.notifier.status(this.summary())
    })
    return runtime
  }

  /**
   * `add mount`: checks what can be checked at once (the URI, the -o options, the file against
   * the mounts we serve) and starts it; the FUSE side checks the target itself (mount-point.ts).
   */
  addMount (uri: string, file: string, own: MountSettings, origin: MountOrigin): MountRuntime {
    if (this.#stopping !== null) throw new Error('the daemon is shutting down')
    parseNbdUri(uri)
    if (path.normalize(file) !== file || (file.length > 1 && file.endsWith('/'))) throw new InvalidArgumentError(`${file} is not a normalised absolute path`)
    const settings = resolve(this.config.defaults, own)
    parseMountOptions(settings.options)
    const existing = this.mounts.get(file)
    if (existing !== undefined && existing.state !== 'failed') throw new MountError('busy', `${file} is already a mount of this daemon (${existing.state})`)
    for (const m of this.mounts.values()) {
      // Looking up a path inside our own mount would wait on ourselves.
      if (m.file !== file && (file.startsWith(`${m.file}/`) || m.file.startsWith(`${file}/`))) {
        throw new MountError('unsafe-target', `${file} is ${file.startsWith(m.file) ? 'inside' : 'above'} ${m.file}, a mount of this daemon`)
      }
    }
    if (existing !== undefined) {
      this.mounts.delete(file)
      void existing.remove('refuse').catch(() => {})
    }
    return this.#launch(uri, file, own, origin)
  }

  /** What keeps `file` busy (loop devices, open files, mounts inside), by the /proc scan; [] when nothing does. */
  holders (runtime: MountRuntime): string[] {
    const mount = runtime.mount
    if (mount === undefined || runtime.state !== 'up') return []
    return holdersOf(mount.file, mount.path)
  }

  /** Schedules a re-read of the config file; requests during a run make one more run. */
  scheduleReconfigure (): void {
    if (this.configFile === undefined) throw new Error('no --config file was given, so there is nothing to re-read')
    if (this.#stopping !== null) return
    if (this.#reconfiguring) {
      this.#again = true
      return
    }
    this.#reconfiguring = true
    void this.#reconfigureLoop()
  }

  async #reconfigureLoop (): Promise<void> {
    do {
      this.#again = false
      this.notifier.reloading(`reloading ${this.configFile ?? ''}`)
      const pending = await this.lock.mutex.runExclusive(() => this.#applyConfigFile())
      await Promise.all(pending)
      this.notifier.ready(this.summary())
    } while (this.#again && this.#stopping === null)
    this.#reconfiguring = false
  }

  /** Runs holding the config lock; returns the starts it launched (awaited outside the lock). */
  #applyConfigFile (): Array<Promise<void>> {
    const file = this.configFile!
    this.reconfigures++
    let next: DaemonConfig
    try {
      next = parseConfig(readConfigFile(file), file)
    } catch (err) {
      const failed = `failed at ${new Date().toISOString()}`
      const message = err instanceof ConfigFileError ? err.message : `${file}: ${describeError(err)}`
      const where = err instanceof ConfigFileError ? err.where : file
      this.lastReconfigure = { text: `${failed}: ${message}`, public: `${failed}: ${where}` }
      this.#log('error', `reconfigure: ${message}`)
      return []
    }
    if (this.#stopping !== null) return []
    this.config = next
    this.#adoptSettings(next.daemon)
    const plan = planReconfigure([...this.mounts.values()], this.#standalone ? { ...next, mounts: new Map() } : next)
    const pending: Array<Promise<void>> = []
    for (const file of plan.remove) {
      void this.mounts.get(file)?.remove('refuse').catch(() => { this.#log('warn', `${file}: no longer in the config, but busy: it stays until it is free (del mount ${file} lazy|force)`) })
    }
    for (const { section } of plan.add) {
      pending.push(this.addMount(section.uri, section.file, section.settings, 'config').started)
    }
    for (const { section } of plan.replace) {
      const old = this.mounts.get(section.file)!
      this.#log('info', `${section.file}: its URI or a setting that needs a remount changed: remounting`)
      pending.push(old.remove('refuse').then(() => {
        if (this.#stopping === null && !this.mounts.has(section.file)) return this.addMount(section.uri, section.file, section.settings, 'config').started
        return undefined
      }, () => { this.#log('warn', `${section.file}: changed in the config, but busy: the old mount stays until it is free`) }))
    }
    for (const change of plan.live) {
      const runtime = this.mounts.get(change.file)!
      if (change.adopt) runtime.origin = 'config'
      runtime.applyLive(change.own, change.settings)
      if (change.changed.length > 0) {
        const now = describeMountSettings(change.settings)
        this.#log('info', `${change.file}: ${JSON.stringify(Object.fromEntries(change.changed.map((key) => [key, now[key]])))} applied`)
      }
    }
    const ok = `ok at ${new Date().toISOString()}: ${plan.add.length} added, ${plan.remove.length} removed, ${plan.replace.length} remounted, ${plan.live.length} changed, ${plan.untouched.length} untouched`
    this.lastReconfigure = { text: ok, public: ok }
    this.#log('info', `reconfigured from ${file}: ${ok}`)
    return pending
  }

  /**
   * Busy mounts (by the /proc scan) that a teardown in `mode` would refuse, as phrases; [] if
   * none (lazy and force refuse nothing).
   */
  busyMounts (mode: TeardownMode): string[] {
    if (mode !== 'refuse') return []
    const busy: string[] = []
    for (const m of this.mounts.values()) {
      const holders = this.holders(m)
      if (holders.length > 0) busy.push(`${m.file} (in use by ${holders.join(', ')})`)
    }
    return busy
  }

  /**
   * Drains, flushes and unmounts every mount, then closes the control socket. With `refuse`,
   * a mount that turns out busy stays, and so does the daemon (the shutdown can be asked again).
   */
  shutdown (mode: TeardownMode, why: string): Promise<void> {
    this.#stopping ??= this.#shutdown(mode, why)
    return this.#stopping
  }

  async #shutdown (mode: TeardownMode, why: string): Promise<void> {
    this.#log('info', `shutting down: ${why}${mode === 'refuse' ? '' : ` (${mode})`}`)
    this.notifier.stopping(`stopping: ${why}`)
    const results = await Promise.allSettled([...this.mounts.values()].map((m) => m.remove(mode)))
    const refused = results.filter((r) => r.status === 'rejected')
    if (refused.length > 0) {
      this.#log('warn', `shutdown stopped: ${refused.length} mount(s) became busy and stay mounted (shutdown lazy|force)`)
      this.#stopping = null
      this.notifier.ready(this.summary())
      return
    }
    await this.#closeServers()
    this.#log('info', `stopped; ${why}`)
    this.#markStopped(why)
  }

  async #closeServers (): Promise<void> {
    if (this.#ticker !== null) clearInterval(this.#ticker)
    this.#ticker = null
    await this.control?.close().catch((err: unknown) => { this.#log('warn', `control socket: ${describeError(err)}`) })
    const server = this.#http
    this.#http = null
    if (server !== null) await server.close()
    this.notifier.close()
  }
}
