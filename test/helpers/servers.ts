/**
 * Real NBD servers for the tests: nbdkit, qemu-nbd and nbd-server, each on a Unix socket in a
 * private temporary directory. Servers are children of the test process and die with it
 * (nbdkit --exit-with-parent, setpriv --pdeathsig for qemu-nbd); nbd-server can only serve
 * more than one client as a daemon, so its pid is recorded and killed on exit. Only pids we
 * started are ever signalled.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { after } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'

const started = new Set<number>()
process.on('exit', () => {
  for (const pid of started) {
    try { process.kill(pid, 'SIGKILL') } catch { /* already gone */ }
  }
})

/** A private directory, removed when the process exits. */
export function tempDir (prefix = 'nbdts-test-'): string {
  const dir = mkdtempSync(path.join(tmpdir(), prefix))
  process.on('exit', () => { rmSync(dir, { recursive: true, force: true }) })
  return dir
}

export interface RunningServer {
  readonly socket: string
  /** nbd+unix URI for the default export (or the given one). */
  uri: (exportName?: string) => string
  pid: number
  stderr: () => string
  /** Stops the server (SIGTERM, then SIGKILL after 5 s) and waits until it is gone. */
  stop: (signal?: NodeJS.Signals) => Promise<void>
  /** Starts the same server again on the same socket (after stop or kill). */
  restart: () => Promise<void>
}

export function unixUri (socket: string, exportName = ''): string {
  return `nbd+unix:///${encodeURIComponent(exportName)}?socket=${socket}`
}

async function waitFor (what: string, ready: () => boolean | Promise<boolean>, failed: () => string | undefined, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms
  for (;;) {
    const failure = failed()
    if (failure !== undefined) throw new Error(`${what} failed to start: ${failure}`)
    if (await ready()) return
    if (Date.now() > deadline) throw new Error(`${what} did not become ready within ${ms} ms`)
    await sleep(20)
  }
}

function canConnect (socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socket)
    s.once('connect', () => { s.destroy(); resolve(true) })
    s.once('error', () => { resolve(false) })
  })
}

interface ChildServer {
  child: ChildProcess
  log: string[]
}

function spawnServer (command: string, args: string[]): ChildServer {
  const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] })
  const log: string[] = []
  child.stderr!.setEncoding('utf8').on('data', (d: string) => { log.push(d) })
  child.on('error', (err) => { log.push(String(err)) })
  if (child.pid !== undefined) started.add(child.pid)
  child.once('exit', () => { if (child.pid !== undefined) started.delete(child.pid) })
  return { child, log }
}

async function stopChild (server: ChildServer, signal: NodeJS.Signals): Promise<void> {
  const { child } = server
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => child.once('exit', () => { resolve() }))
  child.kill(signal)
  const timer = setTimeout(() => { child.kill('SIGKILL') }, 5000)
  await exited
  clearTimeout(timer)
}

let nextPort = 10930 + (process.pid % 30) * 2

/** A loopback TCP port for a test server (10930-10999, as testing.md found free). */
export function tcpPort (): number {
  nextPort = nextPort >= 10999 ? 10930 : nextPort + 1
  return nextPort
}

/**
 * nbdkit ARGS... on a fresh Unix socket in `dir`, or on 127.0.0.1:`tcp` when given (then
 * `socket` is unused and `uri()` is an nbd:// URI).
 */
export async function startNbdkit (dir: string, args: string[], name = 'nbdkit', options: { tcp?: number } = {}): Promise<RunningServer> {
  const socket = path.join(dir, `${name}.sock`)
  const pidfile = path.join(dir, `${name}.pid`)
  let server: ChildServer
  const listen = options.tcp === undefined ? ['-U', socket] : ['-i', '127.0.0.1', '-p', String(options.tcp)]
  const start = async (): Promise<void> => {
    // nbdkit leaves its socket and pidfile behind; a stale socket makes the next start fail.
    rmSync(socket, { force: true })
    rmSync(pidfile, { force: true })
    server = spawnServer('nbdkit', ['--exit-with-parent', '-f', ...listen, '-P', pidfile, ...args])
    await waitFor(`nbdkit ${args.join(' ')}`, () => existsSync(pidfile) && readFileSync(pidfile, 'utf8').trim() !== '',
      () => server.child.exitCode !== null ? `exit ${server.child.exitCode}: ${server.log.join('')}` : undefined)
  }
  await start()
  return {
    socket,
    uri: (exportName = '') => options.tcp === undefined
      ? unixUri(socket, exportName)
      : `nbd://127.0.0.1:${options.tcp}/${encodeURIComponent(exportName)}`,
    get pid () { return server.child.pid! },
    stderr: () => server.log.join(''),
    stop: (signal = 'SIGTERM') => stopChild(server, signal),
    restart: start
  }
}

/** qemu-nbd on an image file, persistent (-t) and shared (-e 0). */
export async function startQemuNbd (dir: string, args: string[], name = 'qemu'): Promise<RunningServer> {
  const socket = path.join(dir, `${name}.sock`)
  let server: ChildServer
  const start = async (): Promise<void> => {
    rmSync(socket, { force: true })
    server = spawnServer('setpriv', ['--pdeathsig', 'KILL', 'qemu-nbd', '-k', socket, '-t', '-e', '0', ...args])
    await waitFor(`qemu-nbd ${args.join(' ')}`, () => existsSync(socket) && canConnect(socket),
      () => server.child.exitCode !== null ? `exit ${server.child.exitCode}: ${server.log.join('')}` : undefined)
  }
  await start()
  return {
    socket,
    uri: (exportName = '') => unixUri(socket, exportName),
    get pid () { return server.child.pid! },
    stderr: () => server.log.join(''),
    stop: (signal = 'SIGTERM') => stopChild(server, signal),
    restart: start
  }
}

/**
 * nbd-server with one [section] per export: `exports` maps the NBD export name to its
 * settings (exportname = backing file, readonly, flush, fua, trim...).
 */
export async function startNbdServer (dir: string, exports: Record<string, Record<string, string>>, name = 'nbd-server'): Promise<RunningServer> {
  const socket = path.join(dir, `${name}.sock`)
  const pidfile = path.join(dir, `${name}.pid`)
  const config = path.join(dir, `${name}.conf`)
  const sections = Object.entries(exports).map(([exportName, settings]) =>
    `[${exportName}]\n${Object.entries(settings).map(([k, v]) => `    ${k} = ${v}`).join('\n')}`)
  writeFileSync(config, `[generic]\n    allowlist = true\n    unixsock = ${socket}\n\n${sections.join('\n\n')}\n`)
  let pid = 0
  let log: string[] = []
  const start = async (): Promise<void> => {
    rmSync(socket, { force: true })
    rmSync(pidfile, { force: true })
    // Only the daemon serves more than one client; it detaches, so we track it by pidfile.
    const launcher = spawnServer('nbd-server', ['-C', config, '-p', pidfile])
    log = launcher.log
    await waitFor('nbd-server', async () => existsSync(pidfile) && existsSync(socket) && await canConnect(socket),
      () => launcher.child.exitCode !== null && launcher.child.exitCode !== 0 ? `exit ${launcher.child.exitCode}: ${launcher.log.join('')}` : undefined)
    pid = Number(readFileSync(pidfile, 'utf8').trim())
    started.add(pid)
  }
  await start()
  return {
    socket,
    uri: (exportName = '') => unixUri(socket, exportName),
    get pid () { return pid },
    stderr: () => log.join(''),
    stop: async (signal = 'SIGTERM') => {
      try { process.kill(pid, signal) } catch { return }
      for (let i = 0; i < 250; i++) {
        try { process.kill(pid, 0) } catch { started.delete(pid); return }
        await sleep(20)
      }
      process.kill(pid, 'SIGKILL')
      started.delete(pid)
    },
    restart: start
  }
}

/**
 * A test file's scene: a private directory, `nbdkit(name, args)` to start servers there, and
 * `defer(fn)` for any other cleanup; everything is stopped after the file's last test.
 */
export function testScene (): { dir: string, nbdkit: (name: string, args: string[]) => Promise<RunningServer>, defer: (fn: () => Promise<void>) => void } {
  const dir = tempDir()
  const cleanups: Array<() => Promise<void>> = []
  // Last made, first undone: daemons and clients go before the servers they use (a daemon
  // whose server died first would wait its reconnect delay to flush).
  after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {})
  })
  return {
    dir,
    nbdkit: async (name, args) => {
      const server = await startNbdkit(dir, args, name)
      cleanups.push(() => server.stop('SIGKILL'))
      return server
    },
    defer: (fn) => { cleanups.push(fn) }
  }
}

/** Runs a command to completion; rejects with its stderr on failure. */
export function run (command: string, args: string[], options: { input?: Buffer, timeoutMs?: number } = {}): Promise<{ stdout: Buffer, stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] })
    const out: Buffer[] = []
    let err = ''
    child.stdout.on('data', (d: Buffer) => out.push(d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => { err += d })
    const timer = setTimeout(() => { child.kill('SIGKILL') }, options.timeoutMs ?? 60_000)
    child.on('error', reject)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      if (code === 0) resolve({ stdout: Buffer.concat(out), stderr: err })
      else reject(new Error(`${command} ${args.join(' ')} exited ${code ?? signal}: ${err}`))
    })
    child.stdin.end(options.input)
  })
}
