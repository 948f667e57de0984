/**
 * What the daemon answers on its control socket. The control server has already decided who
 * may run what (root, or `help` and `show` for anyone) and taken the config lock for commands
 * that change state; nothing here waits for a mount's I/O:
 *
 *   add mount      checks, persists if asked, starts the mount in the background: "ok" means
 *                  it is starting (`show mount FILE` says when it is up, or why it failed)
 *   del mount      refuses a busy mount (naming what holds it) unless lazy or force, then
 *                  drains, flushes and unmounts in the background
 *   reconfigure    schedules a re-read (coalesced, like multipathd's schedule_reconfigure)
 *   shutdown       refuses while a mount is busy unless lazy or force; then stops after replying
 */
import type { CommandContext, CommandRunner } from '../control/control-server.ts'
import { USAGE, type Command, type MountTopic } from '../control/grammar.ts'
import { describeMountSettings, type MountSettings } from '../control/words.ts'
import { MountError } from '../errors.ts'
import { toJson } from '../util/json.ts'
import { appendToConfigFile } from './config-file.ts'
import { mountSectionText, resolve } from './config.ts'
import type { Daemon } from './daemon.ts'
import type { MountRuntime } from './mount-runtime.ts'
import { daemonConfig, daemonInfo, mountRow, mountsTable, mountTopic, pathRows, pathsTable, redactUri, render } from './views.ts'

export class DaemonCommands {
  readonly #daemon: Daemon

  constructor (daemon: Daemon) {
    this.#daemon = daemon
  }

  readonly run: CommandRunner = async (command, context) => {
    const d = this.#daemon
    switch (command.kind) {
      case 'help': return USAGE
      case 'show': return await this.#show(command.topic, command.json, context)
      case 'show-mount': return this.#showMount(command.file, command.topic, command.json, context)
      case 'add': return this.#add(command)
      case 'del': return this.#del(command.file, command.mode)
      case 'set': return this.#set(command.file, command.settings)
      case 'set-daemon':
        Object.assign(d.settings, command.settings)
        d.applySettings()
        d.log('info', `set ${JSON.stringify(command.settings)}`)
        return 'ok'
      case 'reconnect':
      case 'disconnect': {
        const client = this.#find(command.file).requireClient()
        if (command.kind === 'reconnect') client.reconnect()
        else client.disconnect()
        return 'ok'
      }
      case 'path': {
        const client = this.#find(command.file).requireClient()
        if (client.paths().length === 0) throw new Error('this mount has one path (add mount ... paths URI2 gives it more)')
        if (command.action === 'fail') client.failPath(command.path)
        else if (command.action === 'reinstate') client.reinstatePath(command.path)
        else client.switchPath(command.path)
        d.log('info', `${command.action} path ${command.path} of ${this.#find(command.file).file}`)
        return 'ok'
      }
      case 'reconfigure':
        d.scheduleReconfigure()
        return 'ok'
      case 'shutdown': {
        const busy = d.busyMounts(command.mode)
        if (busy.length > 0) throw new MountError('busy', `busy, so nothing was changed: ${busy.join('; ')}. shutdown lazy detaches busy mounts and serves them until their last user lets go; shutdown force aborts their I/O`)
        // After this reply is on its way.
        setImmediate(() => { void d.shutdown(command.mode, 'shutdown requested on the control socket') })
        return 'ok'
      }
    }
  }

  /** `mount FILE`, or the daemon's only mount when no FILE was named. */
  #find (file: string | undefined): MountRuntime {
    const mounts = this.#daemon.mounts
    if (file === undefined) {
      if (mounts.size === 1) return mounts.values().next().value!
      throw new Error(mounts.size === 0 ? 'the daemon has no mounts' : `the daemon has ${mounts.size} mounts: name one (... mount FILE)`)
    }
    const found = mounts.get(file) ?? [...mounts.values()].find((m) => m.mount?.file === file)
    if (found === undefined) throw new MountError('not-mounted', `${file} is not a mount of this daemon (show mounts lists them)`)
    return found
  }

  async #show (topic: Extract<Command, { kind: 'show' }>['topic'], json: boolean, context: CommandContext): Promise<string> {
    const d = this.#daemon
    const privileged = context.client.privileged
    switch (topic) {
      case 'metrics': return await d.metrics.text()
      case 'mounts': {
        const rows = [...d.mounts.values()].map((m) => mountRow(m, privileged))
        return json ? toJson(rows) : rows.length === 0 ? '(no mounts)' : mountsTable(rows)
      }
      case 'clients': {
        const clients = d.control?.clients ?? []
        return json ? toJson(clients) : render(clients)
      }
      case 'daemon': return output(daemonInfo(d, privileged), json)
      case 'status':
        return output({
          ...daemonInfo(d, privileged),
          mount: [...d.mounts.values()].map((m) => mountTopic(m, 'status', privileged))
        }, json)
      case 'config': return output(daemonConfig(d, privileged), json)
      case 'paths': {
        const rows = [...d.mounts.values()].flatMap((m) => pathRows(m, privileged))
        return json ? toJson(rows) : rows.length === 0 ? '(no mount has several paths)' : pathsTable(rows)
      }
    }
  }

  #showMount (file: string | undefined, topic: MountTopic, json: boolean, context: CommandContext): string {
    return output(mountTopic(this.#find(file), topic, context.client.privileged), json)
  }

  #add (command: Extract<Command, { kind: 'add' }>): string {
    const d = this.#daemon
    if (command.persist && d.configFile === undefined) throw new Error('persist needs the daemon to have a --config file to write to')
    const runtime = d.addMount(command.uri, command.file, command.settings, command.persist ? 'config' : 'ctl')
    if (command.persist) {
      try {
        appendToConfigFile(d.configFile!, mountSectionText(command.uri, command.file, command.settings, `added by "add mount ... persist" on ${new Date().toISOString()}`))
      } catch (err) {
        void runtime.remove('force').catch(() => {})
        throw err
      }
    }
    d.log('info', `add mount ${redactUri(command.uri)} ${command.file}${command.persist ? ' (persisted)' : ''}: ${JSON.stringify(describeMountSettings(command.settings))}`)
    return 'ok'
  }

  #del (file: string, mode: Extract<Command, { kind: 'del' }>['mode']): string {
    const runtime = this.#find(file)
    if (runtime.state === 'removing') throw new Error(`${runtime.file} is already being removed`)
    const holders = mode === 'refuse' ? this.#daemon.holders(runtime) : []
    if (holders.length > 0) {
      throw new MountError('busy', `${runtime.file} is busy (in use by ${holders.join(', ')}), so it stays mounted. ` +
        `del mount ${runtime.file} lazy detaches it and serves it until the last user lets go; force aborts its I/O`)
    }
    void runtime.remove(mode).catch(() => {})
    return 'ok'
  }

  #set (file: string | undefined, settings: MountSettings): string {
    const runtime = this.#find(file)
    const own = { ...runtime.own, ...settings }
    runtime.applyLive(own, resolve(this.#daemon.config.defaults, own))
    this.#daemon.log('info', `${runtime.file}: set ${JSON.stringify(describeMountSettings(settings))}`)
    return 'ok'
  }
}

function output (data: unknown, json: boolean): string {
  return json ? toJson(data) : render(data)
}
