/**
 * Detaching like a daemon, but only once ready: the parent starts the same command again with
 * `--foreground --ready-fd 3` and a pipe on fd 3, and waits for one line on it: "ready ..." or
 * "error REASON". So `nbdts mount` and `nbdts daemon` return when their mounts can be used,
 * with the daemon's first error as theirs.
 *
 *   parent ──spawn(ARGS --foreground --ready-fd 3)──► daemon: ... ─► "ready PID DETAIL"
 *      └── reads one line, exits 0 (or throws the daemon's error)
 */
import { spawn } from 'node:child_process'
import { closeSync, writeSync } from 'node:fs'

/**
 * V8 flags for a daemon (`nbdts mount`'s own, `nbdts daemon`), each unless this process was
 * given it (on its command line or in NODE_OPTIONS). Semi-spaces of 4 MiB: V8 grows them to
 * 16 MiB under load, and a daemon's young generation then holds up to 32 MiB, most of it
 * garbage (its requests reuse their objects; what a request allocates dies with it). Measured
 * with bench/mount-memory.ts (bench/README.md, "Mount daemon memory").
 */
const DAEMON_V8_FLAGS = ['--max-semi-space-size=4']

/** This process's node flags, and the daemon's own where none of the same name was given. */
export function daemonNodeFlags (execArgv: readonly string[] = process.execArgv, nodeOptions = process.env.NODE_OPTIONS ?? ''): string[] {
  const name = (flag: string): string => flag.split('=')[0]!.replaceAll('_', '-')
  const given = new Set([...execArgv, ...nodeOptions.split(/\s+/)].map(name))
  return [...execArgv, ...DAEMON_V8_FLAGS.filter((flag) => !given.has(name(flag)))]
}

/** Runs this program again with `args` (a subcommand and its options), detached; resolves with the words after "ready". */
export async function detach (args: readonly string[]): Promise<string[]> {
  const child = spawn(process.execPath, [...daemonNodeFlags(), process.argv[1]!, ...args, '--foreground', '--ready-fd', '3'],
    { detached: true, stdio: ['ignore', 'ignore', 'ignore', 'pipe'] })
  const answer = await readyLine(child.stdio[3] as NodeJS.ReadableStream,
    new Promise<string>((resolve) => { child.once('exit', (code, signal) => { resolve(`error the daemon exited before it was ready (${code ?? signal})`) }) }))
  ;(child.stdio[3] as NodeJS.ReadableStream & { destroy: () => void }).destroy()
  child.unref()
  if (answer.startsWith('ready ')) return answer.slice(6).split(' ')
  throw new Error(answer.replace(/^error /, ''))
}

/** The parent's side: the first line on the ready pipe, or `exited`'s word if the daemon dies first. */
export function readyLine (pipe: NodeJS.ReadableStream, exited: Promise<string>): Promise<string> {
  return new Promise<string>((resolve) => {
    let text = ''
    pipe.setEncoding('utf8')
    pipe.on('data', (d: string) => {
      text += d
      if (text.includes('\n')) resolve(text.slice(0, text.indexOf('\n')))
    })
    pipe.on('error', () => {})
    void exited.then(resolve)
  })
}

/** The daemon's side: says one line on the ready descriptor (if it has one), then closes it. */
export function readyReporter (fd: number | undefined): (line: string) => void {
  return (line) => {
    if (fd === undefined) return
    try {
      writeSync(fd, `${line}\n`)
      closeSync(fd)
    } catch { /* the parent is gone */ }
  }
}
