#!/usr/bin/env node
/**
 * The nbdts command line. Every command prints one clear line and exits non-zero on error,
 * never a stack trace (set NBDTS_DEBUG=1 to see one).
 *
 * Each command's code is imported when that command runs (`await import()`), not here: a
 * command pays only for what it uses (`--version` loads no client, `info` no daemon, metrics
 * or FUSE, `ctl` only the control socket's client). Keep this file's static imports small:
 * even commander (40 ms) is loaded only when a command line needs it, which `--version` and a
 * plain `ctl` (run in loops by admins and scripts) do not.
 */
import { readFileSync, realpathSync } from 'node:fs'
import { pathToFileURL } from 'node:url'
import type { Command } from 'commander'
import { describeError } from '../errors.ts'
import { LOG_LEVELS, type LogLevel } from './log-level.ts'
import { printableLines } from '../util/printable.ts'
import { extractServerCommands, serverCommandOf, withNbdTarget, type ServerCommands } from './server-command.ts'
import type { TlsFlags } from './tls-options.ts'
import { UsageError } from './usage.ts'

/** Read when asked for (the help, --version), not by every command. */
const packageVersion = (): string => (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version

// What the CLI prints may carry a daemon's reply, a process name or a server's words: escaped.
const out = (text: string): void => { process.stdout.write(printableLines(text) + '\n') }
const fail = (err: unknown): void => { process.stderr.write(`nbdts: ${printableLines(describeError(err))}\n`) }

/** info's --can/--is properties (nbdinfo's), for the help; info.ts holds what each one reads. */
const QUERY_HELP = 'connect, read, write, flush, fua, trim, zero, fast-zero, cache, df, multi-conn, structured-reply, read-only, rotational, tls'

/**
 * `--map` without "=" takes no value (as nbdinfo's, where the context needs "="): commander's
 * optional values would swallow the URI.
 */
export function normalizeInfoArgv (argv: readonly string[]): string[] {
  if (argv[0] !== 'info') return [...argv]
  const end = argv.indexOf('--')
  return argv.map((a, i) => (end !== -1 && i > end) || a !== '--map' ? a : '--map=')
}

/** Repeatable option values, in order. */
function collect (value: string, previous: string[]): string[] {
  return [...previous, value]
}

/** `commands`: the `[ CMD ... ]` taken out of argv (see server-command.ts). */
export async function buildProgram (commands: ServerCommands = []): Promise<Command> {
  const [{ Command, Option }, { parseConnections, parseCount, parseDuration }, { addTlsOptions }, { addCopyCommand }] =
    await Promise.all([import('commander'), import('./durations.ts'), import('./tls-options.ts'), import('./copy.ts')])
  const program = new Command('nbdts')
    .description('A userspace NBD client: inspect exports, copy them, mount them as a local file, control running mounts')
    .version(packageVersion())
    .showHelpAfterError('(nbdts --help lists the commands)')
    .exitOverride()

  // --can and --is set one query; the last given wins, as in nbdinfo.
  let query: string | undefined
  const setQuery = (value: string): string => { query = value; return value }
  addTlsOptions(program.command('info'))
    .description('show what an NBD server offers (like nbdinfo); --can and --is exit 0 when true, 2 when false')
    .argument('<uri>', 'NBD URI: nbd://host[:port]/export, nbd+unix:///export?socket=PATH, nbds://..., or [ CMD ... ]: a server run with socket activation')
    .option('--json', 'machine-readable output (JSON)')
    .option('-L, --list', 'list every export the server offers (NBD_OPT_LIST)')
    .addOption(new Option('--map [context]', 'print the extents of the export (block status) in base:allocation, or with --map=CONTEXT ("=" needed) in that meta context'))
    .option('--totals', 'with --map: the bytes and share of the export of each extent type')
    .option('--size', 'print only the export\'s size in bytes')
    .addOption(new Option('--can <property>', `test a property, printing nothing: ${QUERY_HELP}`).argParser(setQuery))
    .addOption(new Option('--is <property>', 'the same as --can (read-only, rotational, tls read better with it)').argParser(setQuery))
    .addOption(new Option('--context <name>', 'the older spelling of --map=NAME').hideHelp())
    .addOption(new Option('--open-timeout <duration>', 'keep retrying the first connect this long (seconds, or 500ms, 2s)').argParser(parseDuration))
    .action(async (uri: string, options: { json?: boolean, list?: boolean, map?: string | true, totals?: boolean, size?: boolean, context?: string, openTimeout?: number } & TlsFlags) => {
      const { runInfo } = await import('./info.ts')
      const { map, ...rest } = options
      process.exitCode = await withNbdTarget(uri, commands, (target) => runInfo(target.uri, {
        ...rest,
        ...(map !== undefined && { map: map === '' ? true : map }),
        ...(query !== undefined && { query }),
        ...(target.open !== undefined && { open: target.open })
      }, { out }))
    })

  addTlsOptions(program.command('mount'))
    .description('expose an export as a local file through FUSE (FILE: a file to mount over, or a directory); ' +
      'only you may open it unless -o allow_other (and uid=, gid=, mode=) say otherwise; users other than root mount through fusermount3')
    .argument('<uri>', 'NBD URI, or [ CMD ... ]: a server run for this mount alone (socket activation), stopped when it ends')
    .argument('<file>', 'an existing regular file (mounted over) or a directory (the export appears as DIR/nbd)')
    .option('--readonly', 'refuse writes')
    .addOption(new Option('-o, --options <list>', 'FUSE mount options, comma-separated, repeatable: allow_other, uid=N, gid=N, mode=0644, ' +
      'kernel_cache, ro, busy_poll=µs (spin before sleeping while I/O flows; default 30, 0: off), reader=drain|thread (who reads /dev/fuse), ' +
      'readahead=KiB (root only; default 4096), blksize=N (st_blksize; default 1 MiB), ' +
      'and the mount flags exec, noexec, async, sync, atime, noatime, dirsync, max_read=N').argParser(collect).default([], ''))
    .addOption(new Option('--reconnect-delay <duration>', 'how long I/O waits for a lost server before failing with EIO').default(30_000, '30s').argParser(parseDuration))
    .addOption(new Option('--open-timeout <duration>', 'keep retrying the first connect this long').default(0, '0: one attempt').argParser(parseDuration))
    .addOption(new Option('--max-in-flight <n>', 'NBD requests in flight per connection').default(64).argParser(parseCount))
    .addOption(new Option('--connections <n|auto>', 'NBD connections; auto: 4 when the server allows multi-conn, else 1').default('auto').argParser(parseConnections))
    .option('--foreground', 'stay in the foreground instead of detaching once the mount is ready (a process of its own)')
    .option('--standalone', 'a process of its own even when an nbdts daemon is running (which would otherwise take the mount)')
    .option('--pidfile <path>', 'write the daemon\'s pid here once the mount is ready')
    .option('--control-socket <path>', 'serve the control socket here')
    .addOption(new Option('--log-level <level>', 'log detail').choices(LOG_LEVELS).default('info'))
    .option('--log-file <path>', 'log here (a detached daemon logs nowhere otherwise)')
    .option('--name <name>', 'the export\'s file name when FILE is a directory (as nbdfuse)', 'nbd')
    .option('--config <file>', 'the daemon config (TOML): its [daemon] and [defaults] sections apply, re-read by "nbdts ctl reconfigure"')
    .addOption(new Option('--control-timeout <duration>', 'deadline of one control socket request').default(4000, '4s').argParser(parseDuration))
    .addOption(new Option('--path <uri>', 'multipath: another URI of the same export, repeatable (URI is path 1)').argParser(collect).default([], ''))
    .addOption(new Option('--path-selector <policy>', 'multipath: failover (one active path) or round-robin (every path; needs multi-conn)').choices(['failover', 'round-robin']))
    .option('--failback <policy>', 'multipath: back to path 1 once ready: immediate, manual, or after a delay (e.g. 30s)')
    .option('--polling-interval <duration>', 'multipath: how often every path is checked (default 5s)')
    .option('--no-path-retry <duration>', 'multipath.conf\'s name for --reconnect-delay: how long I/O waits with every path down')
    .option('--path-identity <identity>', 'multipath: what must match on every path besides size and capabilities: export, description, or OFFSET+LENGTH bytes')
    .addOption(new Option('--ready-fd <fd>').argParser(parseCount).hideHelp())
    .action(async function (this: Command, uri: string, file: string, options: { readonly?: boolean, options: string[], reconnectDelay: number, openTimeout: number, maxInFlight: number, connections: number | 'auto', foreground?: boolean, standalone?: boolean, pidfile?: string, controlSocket?: string, logLevel: LogLevel, logFile?: string, name: string, readyFd?: number, config?: string, controlTimeout: number, path: string[], pathSelector?: string, failback?: string, pollingInterval?: string, pathRetry?: string | boolean, pathIdentity?: string } & TlsFlags) {
      const explicit = new Set(Object.keys(options).filter((key) => this.getOptionValueSource(key) === 'cli'))
      // Commander reads --no-path-retry as the negation of "path-retry" (true when absent): it
      // is multipath.conf's name, with a value.
      const { pathRetry, ...rest } = options
      const command = serverCommandOf(uri, commands)
      const { runMount } = await import('./mount.ts')
      process.exitCode = await runMount(command ?? uri, file, { ...rest, ...(typeof pathRetry === 'string' && { noPathRetry: pathRetry }), explicit }, { out })
    })

  addCopyCommand(program, commands, out)

  program.command('daemon')
    .description('one daemon for many mounts, managed with nbdts ctl (add mount, del mount, show mounts, reconfigure...) and a config file')
    .option('--control-socket <path>', 'serve the control socket here (default: $NBDTS_DAEMON_SOCKET, else /run/nbdts/nbdts.sock)')
    .option('--config <file>', 'the config (TOML: [daemon], [defaults], one [[mount]] per mount), re-read by reconfigure and SIGHUP')
    .option('--foreground', 'stay in the foreground (systemd Type=notify, tests) instead of detaching once every mount is up or failed')
    .option('--pidfile <path>', 'write the daemon\'s pid here once its mounts are up')
    .addOption(new Option('--log-level <level>', 'log detail').choices(LOG_LEVELS).default('info'))
    .option('--log-file <path>', 'log here (a detached daemon logs nowhere otherwise)')
    .addOption(new Option('--control-timeout <duration>', 'deadline of one control socket request').default(4000, '4s').argParser(parseDuration))
    .option('--metrics-listen <host:port>', 'serve the metrics (Prometheus text format) over HTTP at /metrics, e.g. 127.0.0.1:9617, or on a Unix socket: /run/nbdts/metrics.sock')
    .addOption(new Option('--ready-fd <fd>').argParser(parseCount).hideHelp())
    .action(async function (this: Command, options: { controlSocket?: string, config?: string, foreground?: boolean, pidfile?: string, logLevel: LogLevel, logFile?: string, controlTimeout: number, metricsListen?: string, readyFd?: number }) {
      const explicit = new Set(Object.keys(options).filter((key) => this.getOptionValueSource(key) === 'cli'))
      const { runDaemon } = await import('./daemon.ts')
      process.exitCode = await runDaemon({ ...options, explicit }, { out })
    })

  program.command('ctl')
    .description('talk to a running mount through its control socket (one command, or -k for interactive)')
    .argument('[command...]', 'the command, e.g.: show mounts, add mount URI FILE, set mount FILE reconnect-delay 60s, help; or watch (a live view)')
    .option('--socket <path>', 'the control socket (default: the daemon\'s, else the only one in /run/nbdts)')
    .option('--mount <file>', 'the mount whose default control socket to use')
    .addOption(new Option('--timeout <ms>', 'the server\'s deadline; ctl waits 500 ms more').default(4000).argParser(parseCount))
    .option('-k, --interactive', 'interactive mode, with history and completion')
    .option('--json', 'machine-readable output (JSON): adds the control language\'s own "json" word (show mounts --json = show mounts json)')
    .action(async (words: string[], options: { socket?: string, mount?: string, timeout: number, interactive?: boolean, json?: boolean }) => {
      const { runCtl } = await import('./ctl.ts')
      process.exitCode = await runCtl(words, options, { out, err: (text) => { process.stderr.write(printableLines(text) + '\n') } })
    })

  program.command('umount')
    .description('unmount (refused while busy, naming what holds it); the daemon then flushes and exits')
    .argument('<file>', 'the mounted file or directory')
    .option('--lazy', 'detach now even if in use; the daemon serves open files until the last one closes')
    .option('--force', 'if busy, abort the FUSE connection: I/O in progress and later fails')
    .action(async (file: string, options: { lazy?: boolean, force?: boolean }) => {
      const { runUmount } = await import('./mount.ts')
      process.exitCode = await runUmount(file, options, { out })
    })

  // A usage error says what was wrong and where the help is, not the whole help.
  for (const command of program.commands) command.showHelpAfterError(`(nbdts ${command.name()} --help for its usage)`)
  return program
}

export async function main (argv: readonly string[]): Promise<number> {
  // The two command lines scripts run most, answered without commander; anything else (help,
  // a usage error) goes through it below.
  if (argv.length === 1 && (argv[0] === '--version' || argv[0] === '-V')) {
    out(packageVersion())
    return 0
  }
  if (argv[0] === 'ctl') {
    try {
      const { parseCtlArgs, runCtl } = await import('./ctl.ts')
      const ctl = parseCtlArgs(argv.slice(1))
      if (ctl !== undefined) return await runCtl(ctl.words, ctl.options, { out, err: (text) => { process.stderr.write(text + '\n') } })
    } catch (err) {
      return failed(err, argv)
    }
  }
  let program: Command
  try {
    const extracted = extractServerCommands(argv)
    program = await buildProgram(extracted.commands)
    const { normalizeCopyArgv } = await import('./copy.ts')
    argv = normalizeInfoArgv(normalizeCopyArgv(extracted.argv))
  } catch (err) {
    fail(err)
    return 2
  }
  try {
    await program.parseAsync(argv, { from: 'user' })
    return typeof process.exitCode === 'number' ? process.exitCode : 0
  } catch (err) {
    const { CommanderError } = await import('commander')
    if (err instanceof CommanderError) {
      // Help and version exit 0; usage errors were already printed by commander.
      return err.exitCode === 0 ? 0 : 2
    }
    return failed(err, argv)
  }
}

/** One line on stderr for an error from a command: 2 for a usage error, else 1. */
function failed (err: unknown, argv: readonly string[]): number {
  if (err instanceof UsageError) {
    process.stderr.write(`nbdts: ${printableLines(err.message)}\n(nbdts ${argv[0] ?? ''} --help for its usage)\n`)
    return 2
  }
  fail(err)
  if (process.env.NBDTS_DEBUG === '1' && err instanceof Error) process.stderr.write(`${err.stack ?? ''}\n`)
  return 1
}

/**
 * Runs a command line (process.argv.slice(2)) and leaves its exit code in process.exitCode:
 * what the bin (bin.cts) calls, from the bundle or from this file.
 */
export function run (argv: readonly string[]): void {
  main(argv).then((code) => {
    process.exitCode = code
    // A mount daemon's reader thread may still sit in a read() of /dev/fuse; it has nothing
    // left to do once we get here.
    if (argv[0] === 'mount' || argv[0] === 'daemon') process.exit(code)
  }, (err: unknown) => {
    fail(err)
    process.exitCode = 1
  })
}

// Run when executed (`node dist/cli/main.js`, as the tests and scripts do), not when imported
// by the tests or the bin. npm's bin is a symlink, so compare real paths.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) run(process.argv.slice(2))
