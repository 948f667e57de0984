/**
 * `nbdts daemon --foreground` as a child of the test, told apart from everything else by its
 * own control socket in the test's directory (never the default one: other engineers' mounts
 * would be handed to it). It reports ready on fd 3, as it does to a detaching parent. Whatever a
 * failing test leaves is cleaned up at exit: the daemon is killed and its mounts detached.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { ControlConnection, type ControlReply } from '../../src/control/index.ts'
import { joinWords } from '../../src/control/grammar.ts'
import { readyLine } from '../../src/cli/detach.ts'
import { within } from './assert.ts'
import { CLI } from './cli.ts'

const children = new Set<ChildProcess>()
process.on('exit', () => {
  for (const child of children) {
    try { child.kill('SIGKILL') } catch { /* gone */ }
  }
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const fields = line.split(' ')
    if (line.includes(' - fuse.nbdts ') && ours.some((dir) => fields[4]?.startsWith(`${dir}/`))) spawnSync('umount', ['-l', fields[4]!], { stdio: 'ignore' })
  }
})
/** Directories whose nbdts mounts are detached at exit. */
const ours: string[] = []

export interface TestDaemon {
  readonly socket: string
  readonly pid: number
  readonly child: ChildProcess
  readonly log: string
  /** The first line the daemon said on fd 3 ("ready PID SUMMARY" or "error ..."). */
  readonly ready: string
  logText: () => string
  /** One command; a reply (ok or fail). */
  ctl: (...words: string[]) => Promise<ControlReply>
  /** `show mounts json`. */
  mounts: () => Promise<Array<{ file: string, state: string, uri: string, error?: string, connections: string[], iops: number, mibps: number, p99ms: number | null, inFlight: number, origin: string }>>
  /** Resolves once `file` is in `state` (or gone, for 'gone'); fails after `ms`. */
  waitFor: (file: string, state: string, ms?: number) => Promise<void>
  exited: Promise<number | null>
  /** shutdown (force) and wait for the exit. */
  stop: () => Promise<void>
}

/** `wrap`: a command the daemon runs under (e.g. prlimit ... --), given as its words. */
export async function startDaemon (dir: string, name: string, options: { config?: string, args?: string[], env?: NodeJS.ProcessEnv, wrap?: string[] } = {}): Promise<TestDaemon> {
  if (!ours.includes(dir)) ours.push(dir)
  const socket = path.join(dir, `${name}.ctl`)
  const log = path.join(dir, `${name}-daemon.log`)
  const args = [CLI, 'daemon', '--foreground', '--ready-fd', '3', '--control-socket', socket, '--log-file', log, '--log-level', 'debug', ...(options.args ?? [])]
  if (options.config !== undefined) {
    const config = path.join(dir, `${name}.toml`)
    writeFileSync(config, options.config, { mode: 0o644 })
    args.push('--config', config)
  }
  const [command, ...prefix] = [...(options.wrap ?? []), process.execPath]
  const child = spawn(command!, [...prefix, ...args], { stdio: ['ignore', 'ignore', 'pipe', 'pipe'], env: options.env ?? process.env })
  children.add(child)
  let stderr = ''
  child.stderr!.setEncoding('utf8').on('data', (d: string) => { stderr += d })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => { children.delete(child); resolve(code) }))
  const ready = await within(readyLine(child.stdio[3] as NodeJS.ReadableStream, exited.then((code) => `error exited ${code}: ${stderr}`)), 60_000, 'the daemon\'s start')
  let connection: ControlConnection | null = null
  const ctl = async (...words: string[]): Promise<ControlReply> => {
    if (connection === null || connection.closed) connection = await ControlConnection.connect(socket)
    return await connection.request(joinWords(words), 4000)
  }
  const mounts = async (): Promise<Awaited<ReturnType<TestDaemon['mounts']>>> => {
    const reply = await ctl('show', 'mounts', 'json')
    if (!reply.ok) throw new Error(reply.text)
    return JSON.parse(reply.text) as Awaited<ReturnType<TestDaemon['mounts']>>
  }
  const logText = (): string => existsSync(log) ? readFileSync(log, 'utf8') : ''
  return {
    socket,
    pid: child.pid!,
    child,
    log,
    ready,
    logText,
    ctl,
    mounts,
    waitFor: async (file, state, ms = 30_000) => {
      const deadline = Date.now() + ms
      for (;;) {
        const found = (await mounts()).find((m) => m.file === file)
        if (state === 'gone' ? found === undefined : found?.state === state) return
        if (Date.now() > deadline) throw new Error(`${file} did not become ${state} within ${ms} ms (now ${JSON.stringify(found)}); log:\n${logText().slice(-3000)}`)
        await sleep(25)
      }
    },
    exited,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      try {
        await ctl('shutdown', 'force')
      } catch { /* already going */ }
      connection?.close()
      const timer = setTimeout(() => { child.kill('SIGKILL') }, 60_000)
      await exited
      clearTimeout(timer)
    }
  }
}
