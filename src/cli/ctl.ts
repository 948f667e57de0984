/**
 * `nbdts ctl [--socket P | --mount FILE] [--timeout MS] COMMAND...` sends one command and
 * exits 0 on success, 1 on "fail" (its reason on stderr). `nbdts ctl -k` is interactive, with
 * history and completion of the grammar; a timeout or a lost connection is reported, and the
 * next command reconnects (so does one after the daemon closed an idle connection).
 *
 * The history lives in ~/.nbdts_history, found through $HOME, which `sudo` may have kept from
 * the user who ran it: a $HOME that the effective user does not own gets no history at all,
 * and the file is opened without following a link, mode 0600, only if it is ours.
 */
import { closeSync, existsSync, readdirSync, statSync } from 'node:fs'
import { homedir } from 'node:os'
import path from 'node:path'
// The client and the grammar, not the control/ barrel: that one brings the server, its lock
// and peer credentials, which a ctl run in a loop should not load.
import { ControlConnection, controlRequest } from '../control/client.ts'
import { complete, joinWords } from '../control/grammar.ts'
import { printableLines } from '../util/printable.ts'
import { openOwnFile, readFileNoFollow, rewrite } from '../util/safe-file.ts'
import { controlDir, daemonSocket, defaultControlSocket } from './socket-paths.ts'

export interface CtlOptions {
  readonly socket?: string
  readonly mount?: string
  readonly timeout: number
  readonly interactive?: boolean
  /** --json: the command's "json" form (multipathd's trailing word, which works too). */
  readonly json?: boolean
}

export interface CtlIo {
  readonly out: (text: string) => void
  readonly err: (text: string) => void
}

/**
 * The command line of a plain `nbdts ctl`, read without commander (which takes longer to load
 * than the rest of ctl): --socket, --mount, --timeout, -k, --json and the command's words.
 * Undefined for anything else (--help, an unknown flag, a bad value): commander then parses
 * it, and says what is wrong. Both read the same flags with the same defaults; the tests run
 * them side by side.
 */
export function parseCtlArgs (args: readonly string[]): { words: string[], options: CtlOptions } | undefined {
  const words: string[] = []
  const options: { socket?: string, mount?: string, timeout: number, interactive?: boolean, json?: boolean } = { timeout: 4000 }
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!
    if (arg === '--') {
      words.push(...args.slice(i + 1))
      break
    }
    if (!arg.startsWith('-')) {
      words.push(arg)
      continue
    }
    if (arg === '-k' || arg === '--interactive') options.interactive = true
    else if (arg === '--json') options.json = true
    else {
      const [flag, inline] = arg.startsWith('--') && arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined]
      if (flag !== '--socket' && flag !== '--mount' && flag !== '--timeout') return undefined
      const value = inline ?? args[++i]
      if (value === undefined || value === '') return undefined
      if (flag === '--socket') options.socket = value
      else if (flag === '--mount') options.mount = value
      else {
        const n = Number(value)
        if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < 1) return undefined
        options.timeout = n
      }
    }
  }
  return { words, options }
}

/**
 * --socket; else --mount FILE's own socket (a standalone mount), or the daemon's when FILE has
 * none; else the daemon's socket when it is there; else the only socket in the control
 * directory.
 */
export function resolveSocket (options: CtlOptions): string {
  if (options.socket !== undefined) return path.resolve(options.socket)
  if (options.mount !== undefined) {
    const own = defaultControlSocket(options.mount)
    return existsSync(own) || !existsSync(daemonSocket()) ? own : daemonSocket()
  }
  if (existsSync(daemonSocket())) return daemonSocket()
  const dir = controlDir()
  const sockets = existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.sock')) : []
  if (sockets.length === 1) return path.join(dir, sockets[0]!)
  if (sockets.length === 0) throw new Error(`no control socket in ${dir}: is nbdts daemon or a mount running? (or give --socket PATH)`)
  throw new Error(`several mounts are running (${sockets.join(', ')}): choose one with --socket PATH or --mount FILE`)
}

export async function runCtl (words: readonly string[], options: CtlOptions, io: CtlIo): Promise<number> {
  const socket = resolveSocket(options)
  if (options.interactive === true) return await interactive(socket, options.timeout, io)
  if (words.length === 1 && words[0] === 'watch') return await (await import('./watch.ts')).watch(socket, options.timeout)
  if (words.length === 0) throw new Error('no command given (try: nbdts ctl help, or nbdts ctl -k for interactive use)')
  const command = options.json === true && words.at(-1) !== 'json' ? [...words, 'json'] : words
  const reply = await controlRequest(socket, joinWords(command), options.timeout)
  // The daemon escapes what it quotes; a daemon we should not trust may not have (uxlsnr.md).
  if (reply.ok) {
    io.out(printableLines(reply.text))
    return 0
  }
  io.err(`nbdts: ${printableLines(reply.text)}`)
  return 1
}

const HISTORY_MODE = 0o600
const HISTORY_LINES = 500

/** ~/.nbdts_history, or undefined when $HOME is not the effective user's own directory. */
export function historyFile (home = homedir()): string | undefined {
  try {
    const stat = statSync(home)
    if (!stat.isDirectory() || stat.uid !== (process.geteuid?.() ?? -1)) return undefined
  } catch {
    return undefined
  }
  return path.join(home, '.nbdts_history')
}

export function loadHistory (file: string | undefined): string[] {
  if (file === undefined) return []
  const euid = process.geteuid?.() ?? -1
  try {
    const { text } = readFileNoFollow(file, { maxBytes: 1024 * 1024, check: (stat) => stat.uid === euid ? undefined : 'not ours' })
    return text.split('\n').filter((l) => l !== '').reverse().slice(0, HISTORY_LINES)
  } catch {
    return []
  }
}

export function saveHistory (file: string | undefined, lines: readonly string[]): void {
  if (file === undefined) return
  let fd: number | undefined
  try {
    fd = openOwnFile(file, HISTORY_MODE)
    rewrite(fd, lines.slice(0, HISTORY_LINES).reverse().join('\n') + '\n')
  } catch { /* read-only home, or a file that is not ours: no history */ } finally {
    if (fd !== undefined) closeSync(fd)
  }
}

/** The daemon's mount files, for completion (none when it cannot say). */
async function mountFiles (connection: ControlConnection, timeout: number): Promise<string[]> {
  try {
    const reply = await connection.request('show mounts json', timeout)
    return reply.ok ? (JSON.parse(reply.text) as Array<{ file: string }>).map((m) => m.file) : []
  } catch {
    return []
  }
}

async function interactive (socket: string, timeout: number, io: CtlIo): Promise<number> {
  const historyPath = historyFile()
  const history = loadHistory(historyPath)
  let files: string[] = []
  const readline = await import('node:readline')
  const rl = readline.createInterface({
    input: process.stdin,
    output: process.stdout,
    prompt: 'nbdts> ',
    history,
    historySize: HISTORY_LINES,
    completer: (line: string): [string[], string] => {
      const word = line.split(/\s+/).pop() ?? ''
      return [complete(line, files).map((c) => c + ' '), word]
    }
  })
  let connection: ControlConnection | null = null
  rl.prompt()
  for await (const raw of rl) {
    const line = raw.trim()
    if (line === 'quit' || line === 'exit') break
    if (line !== '') {
      try {
        if (connection?.closed === true) connection = null
        connection ??= await ControlConnection.connect(socket, timeout)
        const reply = await connection.request(line, timeout)
        if (reply.ok) io.out(printableLines(reply.text))
        else io.err(`fail: ${printableLines(reply.text)}`)
        if (/^(add|del) /.test(line) || files.length === 0) files = await mountFiles(connection, timeout)
      } catch (err) {
        // Timeouts and lost connections are said plainly; the next command reconnects.
        io.err(`error: ${printableLines((err as Error).message)}`)
        connection?.close()
        connection = null
      }
    }
    rl.prompt()
  }
  connection?.close()
  rl.close()
  saveHistory(historyPath, (rl as unknown as { history: string[] }).history)
  return 0
}
