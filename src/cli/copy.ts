/**
 * `nbdts copy SRC DST`: nbdcopy's job with our client. SRC and DST are NBD URIs, `[ CMD … ]`,
 * files or block devices, `-`, or (DST) `null:`; see src/copy for the engine.
 *
 * Defaults are nbdcopy's: 4 connections to each end that allows multi-conn (else 1), 64
 * requests per connection, 256 KiB requests, at most 16 MiB in flight per connection, zero
 * detection in 4 KiB blocks. Exit codes: 0 done, 1 failed (one line on stderr naming the end
 * and the range), 2 usage, 130/143 interrupted by SIGINT/SIGTERM (requests in flight settle,
 * connections close cleanly, servers we started stop).
 */
import { setMaxListeners } from 'node:events'
import { Option, type Command } from 'commander'
import { InvalidArgumentError as UsageError } from 'commander'
import { AbortedError } from '../errors.ts'
// The copy engine is imported when a copy runs: main.ts declares this command for every command.
import type { CopyResult, Progress, ProgressReporter } from '../copy/index.ts'
import { parseCount, parseDuration } from './durations.ts'
import { serverCommandOf, type ServerCommands } from './server-command.ts'

export interface CopyFlags {
  readonly connections: number
  readonly requests: number
  readonly requestSize: number
  readonly queueSize: number
  readonly sparse: number
  readonly allocated?: boolean
  readonly destinationIsZero?: boolean
  readonly targetIsZero?: boolean
  readonly extents: boolean
  readonly flush?: boolean
  readonly progress?: string
  readonly json?: boolean
  readonly reconnectDelay: number
  readonly verbose?: boolean
}

const K = 1024
const M = K * K

/** 4096, 4k, 256K, 1M, 1m, 2G: bytes. */
export function parseSize (text: string): number {
  const match = /^(\d+)([kKmMgG]?)$/.exec(text.trim())
  if (match === null) throw new UsageError(`"${text}" is not a size (examples: 4096, 256K, 1M)`)
  const unit = { '': 1, k: K, m: M, g: K * M }[match[2]!.toLowerCase() as '' | 'k' | 'm' | 'g']
  return Number(match[1]) * unit
}

function requestSize (text: string): number {
  const n = parseSize(text)
  if (n < 4096 || n > 32 * M || (n & (n - 1)) !== 0) throw new UsageError(`--request-size must be a power of two from 4096 to 32M, not ${text}`)
  return n
}

/** The largest request a server's preferred block size may raise us to (nbdcopy's MAX_REQUEST_SIZE). */
export const MAX_REQUEST_SIZE = 32 * M

/**
 * Bytes per request: --request-size, raised to the servers' preferred block size, but never
 * past 32 MiB nor past --queue-size (rounded down to a power of two): the preferred size is
 * the server's to say, and a hostile one says 1 GiB. Every piece is a multiple of any minimum
 * block size, which is a power of two no larger than the preferred one.
 */
export function copyRequestSize (requestSize: number, queueSize: number, preferred: ReadonlyArray<number | undefined>): number {
  const queueBound = 2 ** Math.floor(Math.log2(Math.max(4096, queueSize)))
  const wanted = Math.max(0, ...preferred.map((p) => p ?? 0))
  return Math.max(requestSize, Math.min(wanted, MAX_REQUEST_SIZE, queueBound))
}

function sparseSize (text: string): number {
  const n = parseSize(text)
  if (n !== 0 && (n < 512 || (n & (n - 1)) !== 0)) throw new UsageError(`--sparse must be 0 or a power of two of at least 512, not ${text}`)
  return n
}

function progressMode (text: string): string {
  if (text === 'auto' || text === 'json' || /^(json:)?\d+$/.test(text)) return text
  throw new UsageError(`--progress takes no value, "json", a file descriptor, or json:FD (not "${text}")`)
}

/** --json: the command line's one JSON spelling; --progress=json and json:FD still work. */
function jsonProgress (mode: string | undefined): string {
  return mode === undefined || mode === 'auto' || mode === 'json' ? 'json' : mode.startsWith('json:') ? mode : `json:${mode}`
}

/**
 * `--progress` and `-p` without "=" take no value (as nbdcopy's, where the value needs "="):
 * commander's optional values would swallow SRC.
 */
export function normalizeCopyArgv (argv: readonly string[]): string[] {
  if (argv[0] !== 'copy') return [...argv]
  const end = argv.indexOf('--')
  return argv.map((a, i) => (end !== -1 && i > end) || (a !== '--progress' && a !== '-p') ? a : '--progress=auto')
}

export function addCopyCommand (program: Command, commands: ServerCommands, out: (text: string) => void): void {
  program.command('copy')
    .description('copy an export, sparse-aware, to or from an NBD server, a file, a block device, stdin/stdout or null: (like nbdcopy)')
    .argument('<source>', 'NBD URI, [ CMD ... ] (a server run with socket activation), a file or block device, or - (stdin)')
    .argument('<destination>', 'the same kinds, or null: (discard)')
    .addOption(new Option('-C, --connections <n>', 'NBD connections per end, used when the server allows multi-conn').default(4).argParser(parseCount))
    .addOption(new Option('-R, --requests <n>', 'requests in flight per connection').default(64).argParser(parseCount))
    .addOption(new Option('--request-size <bytes>', 'bytes per request (a power of two, 4096 to 32M; raised to the servers\' preferred size, up to 32M and --queue-size)').default(256 * K, '256K').argParser(requestSize))
    .addOption(new Option('--queue-size <bytes>', 'at most this many bytes in flight per connection').default(16 * M, '16M').argParser(parseSize))
    .addOption(new Option('-S, --sparse <bytes>', 'detect zero blocks of this size and write them as holes (0: off)').default(4096).argParser(sparseSize))
    .option('--allocated', 'write zero runs as allocated zeroes instead of holes')
    .option('--destination-is-zero', 'the destination already reads zeroes: skip zero runs')
    .addOption(new Option('--target-is-zero', 'the same (nbdcopy\'s other name)').hideHelp())
    .option('--no-extents', 'do not ask the source for its extents (BLOCK_STATUS); zero detection still runs')
    .option('--flush', 'flush the destination at the end')
    .addOption(new Option('-p, --progress <mode>', 'a progress bar on a terminal (--progress alone), else "N/100" lines; --progress=FD: the lines to FD').argParser(progressMode))
    .option('--json', 'progress as JSON lines, one a second (on stderr, or to --progress=FD)')
    .addOption(new Option('--reconnect-delay <duration>', 'how long requests wait for a lost NBD server to come back').default(30_000, '30s').argParser(parseDuration))
    .option('-v, --verbose', 'print what was copied at the end')
    .action(async (source: string, destination: string, flags: CopyFlags) => {
      process.exitCode = await runCopy(source, destination, commands, { ...flags, ...(flags.json === true && { progress: jsonProgress(flags.progress) }) }, { out, err: (text) => { process.stderr.write(text + '\n') } })
    })
}

async function reporter (mode: string | undefined): Promise<ProgressReporter | undefined> {
  if (mode === undefined) return undefined
  const { barReporter, jsonReporter, percentReporter } = await import('../copy/index.ts')
  if (mode === 'auto') return process.stderr.isTTY ? await barReporter(process.stderr) : percentReporter(2)
  if (mode === 'json') return jsonReporter(2)
  if (mode.startsWith('json:')) return jsonReporter(Number(mode.slice(5)))
  return percentReporter(Number(mode))
}

export async function runCopy (sourceArg: string, destinationArg: string, commands: ServerCommands, flags: CopyFlags, io: { out: (text: string) => void, err: (text: string) => void }): Promise<number> {
  const { Progress, copy, describeEndpoint, openEndpoints, parseEndpoint } = await import('../copy/index.ts')
  const src = parseEndpoint(sourceArg, serverCommandOf(sourceArg, commands))
  const dst = parseEndpoint(destinationArg, serverCommandOf(destinationArg, commands))
  const abort = new AbortController()
  // Each connection's requests and the copier listen on it.
  setMaxListeners(0, abort.signal)
  let signalled: NodeJS.Signals | undefined
  const onSignal = (sig: NodeJS.Signals): void => {
    if (signalled !== undefined) process.exit(sig === 'SIGINT' ? 130 : 143)
    signalled = sig
    abort.abort(new AbortedError(sig))
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  let progress: Progress | undefined
  let opened: Awaited<ReturnType<typeof openEndpoints>> | undefined
  try {
    // At most queue-size bytes in flight per connection, as nbdcopy.
    const perConnection = Math.max(1, Math.min(flags.requests, Math.floor(flags.queueSize / flags.requestSize)))
    opened = await openEndpoints(src, dst, {
      connections: flags.connections,
      requests: perConnection,
      reconnectDelay: flags.reconnectDelay,
      extents: flags.extents,
      signal: abort.signal
    })
    const { source, destination } = opened
    const size = copyRequestSize(flags.requestSize, flags.queueSize, [source.preferredBlockSize, destination.preferredBlockSize])
    const requests = Math.max(1, Math.min(perConnection, Math.floor(flags.queueSize / size)))
    progress = flags.progress === undefined ? undefined : new Progress(source.size, await reporter(flags.progress))
    const started = performance.now()
    const result = await copy(source, destination, {
      requestSize: size,
      requests,
      sparse: flags.sparse,
      allocated: flags.allocated === true,
      destinationIsZero: flags.destinationIsZero === true || flags.targetIsZero === true,
      flush: flags.flush === true,
      extents: flags.extents,
      signal: abort.signal,
      ...(progress !== undefined && { progress })
    })
    progress?.stop(true)
    progress = undefined
    if (flags.verbose === true) {
      const reconnects = (source.reconnects?.() ?? 0) + (destination.reconnects?.() ?? 0)
      const rss = Math.round(process.resourceUsage().maxRSS / 1024)
      io.err(summary(describeEndpoint(src), describeEndpoint(dst), result, source.connections, destination.connections, size, requests, performance.now() - started) +
        `, ${reconnects} reconnect(s), peak RSS ${rss} MiB`)
    }
    return 0
  } catch (err) {
    progress?.stop(false)
    if (signalled !== undefined && (err instanceof AbortedError || abort.signal.aborted)) {
      io.err(`nbdts: copy interrupted by ${signalled}`)
      return signalled === 'SIGINT' ? 130 : 143
    }
    throw err
  } finally {
    await opened?.close()
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
}

function summary (src: string, dst: string, r: CopyResult, srcConns: number, dstConns: number, size: number, requests: number, ms: number): string {
  const mib = (n: number): string => (n / M).toFixed(1)
  return `${src} -> ${dst}: ${r.bytes} bytes (${mib(r.dataBytes)} MiB data, ${mib(r.zeroBytes)} MiB zero) in ${(ms / 1000).toFixed(2)} s, ` +
    `${mib(r.bytes / (ms / 1000))} MiB/s; connections ${srcConns}/${dstConns}, ${requests} × ${size} bytes in flight per connection, ${r.workers} workers`
}
