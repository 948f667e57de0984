/**
 * What the mount daemon answers on its control socket. Read-only commands look at the client,
 * the mount and the control server; the others change settings or the connection. `set` and
 * the connection commands run under the config lock (the server takes it); `reconfigure` only
 * schedules a re-read of the config file, coalescing requests that arrive while one runs (like
 * multipathd's schedule_reconfigure), and `shutdown` only asks the daemon to stop.
 */
import type { NbdClient } from '../client/nbd-client.ts'
import type { FuseMount } from '../fuse/fuse-mount.ts'
import { humanSize, toJson } from '../util/json.ts'
import { printable } from '../util/printable.ts'
import type { ConfigLock } from './config-lock.ts'
import type { CommandContext, CommandRunner, ControlServer } from './control-server.ts'
import { USAGE, type Command, type LogLevelWord, type ShowTopic } from './grammar.ts'
import { ConfigFileError, describeSettings, parseConfigFile, readConfigFile, type Settings } from './settings.ts'

export interface DaemonParts {
  readonly uri: string
  readonly client: NbdClient
  readonly mount: FuseMount
  /** Current settings; changed in place by set and reconfigure. */
  readonly settings: Settings
  /** Applies a log level (the logger is the caller's). */
  readonly setLogLevel: (level: LogLevelWord) => void
  readonly configFile: string | undefined
  readonly requestShutdown: (reason: string) => void
  readonly log: (level: 'debug' | 'info' | 'warn' | 'error', message: string) => void
}

export class DaemonControl {
  readonly #parts: DaemonParts
  readonly #lock: ConfigLock
  readonly #startedAt = Date.now()
  /** A reconfigure is running; `#again`: someone asked for another meanwhile. */
  #reconfiguring = false
  #again = false
  /** How the last reconfigure went: in full for root, `public` (file or file:line only) for anyone else. */
  #lastReconfigure: { readonly text: string, readonly public: string } = { text: 'never', public: 'never' }
  #reconfigureCount = 0
  server: ControlServer | null = null

  constructor (parts: DaemonParts, lock: ConfigLock) {
    this.#parts = parts
    this.#lock = lock
  }

  readonly run: CommandRunner = async (command, context) => {
    switch (command.kind) {
      case 'help': return USAGE
      case 'show': return this.#show(command.topic, command.json, context)
      case 'reconnect':
        this.#parts.client.reconnect()
        return 'ok'
      case 'disconnect':
        this.#parts.client.disconnect()
        return 'ok'
      case 'set': return this.#set(command)
      case 'reconfigure':
        if (this.#parts.configFile === undefined) throw new Error('no --config file was given, so there is nothing to re-read')
        this.scheduleReconfigure()
        return 'ok'
      case 'shutdown':
        // After this reply is on its way: unmount and exit.
        setImmediate(() => { this.#parts.requestShutdown('shutdown requested on the control socket') })
        return 'ok'
    }
  }

  #set (command: Extract<Command, { kind: 'set' }>): string {
    const { settings, client } = this.#parts
    switch (command.key) {
      case 'reconnect-delay':
        settings.reconnectDelay = command.ms
        client.reconnectDelay = command.ms
        break
      case 'open-timeout':
        // Only a first connect is bounded by it; kept so `show config` and reconfigure agree.
        settings.openTimeout = command.ms
        break
      case 'max-in-flight':
        settings.maxInFlight = command.count
        client.maxInFlight = command.count
        break
      case 'log-level':
        settings.logLevel = command.level
        this.#parts.setLogLevel(command.level)
        break
    }
    this.#parts.log('info', `set ${command.key} (now ${JSON.stringify(describeSettings(settings))})`)
    return 'ok'
  }

  /** Schedules a re-read of the config file; requests during a run make one more run. */
  scheduleReconfigure (): void {
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
      await this.#lock.mutex.runExclusive(() => this.#applyConfigFile())
    } while (this.#again)
    this.#reconfiguring = false
  }

  async #applyConfigFile (): Promise<void> {
    const file = this.#parts.configFile!
    this.#reconfigureCount++
    try {
      const values = parseConfigFile(readConfigFile(file), file)
      const { settings, client } = this.#parts
      Object.assign(settings, values)
      client.reconnectDelay = settings.reconnectDelay
      client.maxInFlight = settings.maxInFlight
      this.#parts.setLogLevel(settings.logLevel)
      if (this.server !== null) this.server.timeoutMs = settings.controlTimeout
      const ok = `ok at ${new Date().toISOString()}`
      this.#lastReconfigure = { text: ok, public: ok }
      this.#parts.log('info', `reconfigured from ${file}: ${JSON.stringify(describeSettings(settings))}`)
    } catch (err) {
      const failed = `failed at ${new Date().toISOString()}`
      const message = err instanceof ConfigFileError ? err.message : `${file}: ${(err as Error).message}`
      const where = err instanceof ConfigFileError ? err.where : file
      this.#lastReconfigure = { text: `${failed}: ${message}`, public: `${failed}: ${where}` }
      this.#parts.log('error', `reconfigure: ${message}`)
    }
  }

  #show (topic: ShowTopic, json: boolean, context: CommandContext): string {
    const data = this.#gather(topic, context.client.privileged)
    if (json) return toJson(data)
    return render(data)
  }

  #gather (topic: ShowTopic, privileged: boolean): unknown {
    const { client, mount, settings, uri } = this.#parts
    switch (topic) {
      case 'status':
        return {
          uri,
          file: mount.file,
          access: mount.readonly ? 'read-only' : 'read-write',
          exportSize: client.size,
          exportSizeHuman: humanSize(client.size),
          state: client.states.join(' '),
          protocol: `${client.info.protocol}, ${client.info.mode} replies, ${client.info.tls ? 'with' : 'without'} TLS`,
          pid: process.pid,
          uptimeSeconds: Math.round((Date.now() - this.#startedAt) / 1000)
        }
      case 'stats':
        return { client: client.stats, fuse: mount.stats }
      case 'config':
        return {
          ...describeSettings(settings),
          'config-file': this.#parts.configFile ?? '(none)',
          'reconfigures': this.#reconfigureCount,
          'last-reconfigure': privileged ? this.#lastReconfigure.text : this.#lastReconfigure.public
        }
      case 'connections':
        return client.connectionInfo()
      case 'clients':
        return this.server?.clients ?? []
      case 'requests':
        return { fuseInFlight: mount.stats.inFlight, nbd: client.requestsInFlight() }
    }
  }
}

/**
 * A readable rendering: "key: value" lines; arrays as one block per element. Values may quote
 * the server (error messages): control characters are escaped, so one value stays one line.
 */
function render (data: unknown, indent = ''): string {
  if (Array.isArray(data)) {
    if (data.length === 0) return `${indent}(none)`
    return data.map((item) => render(item, indent)).join('\n\n')
  }
  if (typeof data !== 'object' || data === null) return `${indent}${printable(String(data))}`
  return Object.entries(data).filter(([, value]) => value !== undefined).map(([key, value]) => {
    if (typeof value === 'object' && value !== null) {
      return `${indent}${key}:\n${render(value, indent + '  ')}`
    }
    return `${indent}${key}: ${printable(typeof value === 'bigint' ? value.toString() : String(value))}`
  }).join('\n')
}
