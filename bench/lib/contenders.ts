/**
 * The library contenders, each in its own process against the same export: nbdts (our
 * library, and `nbdts copy` for copies), QEMU (`qemu-img bench`, and `qemu-img convert` for copies), libnbd (fio's nbd
 * engine, and nbdcopy for copies) and @vates/nbd-client.
 */
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { BenchExport, ExportName } from './exports.ts'
import type { Job, WorkerResult } from './job.ts'
import { runProc } from './proc.ts'
import { bandwidth, toValue, type Row, type Sample } from './rows.ts'

export interface RunContext {
  readonly exports: Record<ExportName, BenchExport>
  readonly seconds: number
  /** A private directory for mounts and pid files. */
  readonly dir: string
}

export interface Contender {
  readonly name: string
  /** Is this one of ours (ratios are ours ÷ each peer)? */
  readonly ours: boolean
  /** Footnote for the table (how this contender approximates the rows). */
  readonly note?: string
  supports: (row: Row) => boolean
  run: (row: Row, ctx: RunContext) => Promise<Sample>
  /** For mounts: set up before the suite's rows, torn down after. */
  setUp?: (ctx: RunContext) => Promise<void>
  tearDown?: () => Promise<void>
  /** For mounts: the daemon's peak resident memory so far, MiB. */
  peakRssMiB?: () => number | undefined
}

const build = fileURLToPath(new URL('../.build/workers/', import.meta.url))

async function worker (file: string, row: Row, ctx: RunContext, extra: Pick<Job, 'lib' | 'options'> = {}): Promise<WorkerResult> {
  const e = ctx.exports[row.export]
  const job: Job = {
    mode: row.kind === 'copy' ? 'copy' : 'io',
    uri: e.uri,
    rw: row.rw,
    bs: row.bs,
    qd: row.qd,
    seconds: ctx.seconds,
    connections: row.connections ?? 1,
    ...(e.socket !== undefined ? { socket: e.socket } : {}),
    ...(e.port !== undefined ? { port: e.port } : {}),
    ...extra
  }
  const { stdout } = await runProc(process.execPath, [build + file, JSON.stringify(job)], (ctx.seconds + 120) * 1000)
  return JSON.parse(stdout.trim().split('\n').pop()!) as WorkerResult
}

function workerSample (row: Row, ctx: RunContext, r: WorkerResult): Sample {
  const value = row.kind === 'copy' ? bandwidth(ctx.exports[row.export].size, r.seconds) : toValue(row, r.ops, r.seconds)
  return { value, rssMiB: r.maxRssKiB / 1024 }
}

export const nbdtsLibrary: Contender = {
  name: 'nbdts',
  ours: true,
  note: 'copy rows time connect → close inside the process (Node start-up, ~40 ms, is not counted; the C tools are timed whole)',
  supports: (row) => row.kind !== 'fuse',
  run: async (row, ctx) => workerSample(row, ctx, await worker('nbdts.js', row, ctx))
}

/**
 * The library with the replay log off (replayLog: 0), on the write rows only: what the copy of
 * every acknowledged write costs. A reference, not a peer: listed as one so the table shows
 * nbdts ÷ this (the price of the log) next to the real peers.
 */
export const nbdtsNoReplayLog: Contender = {
  name: 'nbdts (no replay log)',
  ours: false,
  note: 'nbdts with replayLog: 0 (acknowledged writes are not kept for a replay after a lost connection); a reference for what the replay log costs, not a configuration we recommend',
  supports: (row) => row.kind === 'io' && row.rw.endsWith('write'),
  run: async (row, ctx) => workerSample(row, ctx, await worker('nbdts.js', row, ctx, { options: { replayLog: 0 } }))
}

/**
 * The library as another build has it (bench --baseline DIR: a worktree at an older commit,
 * built), with the same worker loop: before/after in one run.
 */
export function nbdtsBaseline (dir: string, label: string): Contender {
  const lib = path.join(dir, 'dist/index.js')
  return {
    name: `nbdts @${label}`,
    ours: false,
    note: `nbdts built from ${label} (bench --baseline), same worker loop; a reference for before/after`,
    supports: (row) => row.kind === 'io' && row.export !== 'tls',
    run: async (row, ctx) => workerSample(row, ctx, await worker('nbdts.js', row, ctx, { lib }))
  }
}

/**
 * `nbdts copy` as npm installs it: the bin (dist/cli/bin.cjs), which runs copy from its bundle
 * with the V8 code cache (the first run writes the cache; users' later runs find it).
 */
const bin = fileURLToPath(new URL('../../dist/cli/bin.cjs', import.meta.url))

async function copySample (entry: string, row: Row, ctx: RunContext): Promise<Sample> {
  const e = ctx.exports[row.export]
  const conns = row.connections ?? 1
  const args = [entry, 'copy', '-v', `--connections=${conns}`, `--requests=${Math.max(1, row.qd / conns)}`, `--request-size=${row.bs}`, e.uri, 'null:']
  const t0 = performance.now()
  const { stderr } = await runProc(process.execPath, args, 300_000)
  const seconds = (performance.now() - t0) / 1000
  const rss = /peak RSS (\d+) MiB/.exec(stderr)
  return { value: bandwidth(e.size, seconds), ...(rss !== null && { rssMiB: Number(rss[1]) }) }
}

/**
 * The `nbdts copy` command, the peer of nbdcopy: the same connections, requests in flight per
 * connection and request size, timed whole as nbdcopy is (Node's start-up included). Its peak
 * RSS is what `-v` prints.
 */
export const nbdtsCopy: Contender = {
  name: 'nbdts copy',
  ours: true,
  note: '`nbdts copy URI null:` (the bin, as npm installs it) with nbdcopy\'s --connections, --requests (per connection) and --request-size, timed whole like nbdcopy: Node\'s start-up and the bundle\'s loading are counted',
  supports: (row) => row.kind === 'copy',
  run: async (row, ctx) => await copySample(bin, row, ctx)
}

/** `nbdts copy` as another build has it (bench --baseline DIR), its bin: before/after in one run. */
export function nbdtsCopyBaseline (dir: string, label: string): Contender {
  return {
    name: `nbdts copy @${label}`,
    ours: false,
    note: `\`nbdts copy\` built from ${label} (bench --baseline), its bin, same flags; a reference for before/after`,
    supports: (row) => row.kind === 'copy',
    run: async (row, ctx) => await copySample(path.join(dir, 'dist/cli/bin.cjs'), row, ctx)
  }
}

export const vates: Contender = {
  name: '@vates/nbd-client',
  ours: false,
  note: '@vates/nbd-client only reads, has no block status on a Unix socket (it reads holes too) and no PSK; 4 conns is its MultiNbdClient',
  supports: (row) => row.kind !== 'fuse' && !row.rw.endsWith('write') && row.export !== 'sparse' && row.export !== 'tls',
  run: async (row, ctx) => workerSample(row, ctx, await worker('vates.js', row, ctx))
}

/** Rough rates used to size qemu-img bench's request count so a run lasts about `seconds`. */
function expectedRate (row: Row): number {
  if (row.bs >= 1 << 20) return 4000
  return row.qd === 1 ? 25_000 : 100_000
}

async function timed (command: string, args: string[], timeoutMs: number): Promise<number> {
  const t0 = performance.now()
  await runProc(command, args, timeoutMs)
  return (performance.now() - t0) / 1000
}

/**
 * GnuTLS (QEMU, libnbd) negotiates ChaCha20-Poly1305 with nbdkit on these machines, Node's
 * OpenSSL AES-GCM: a cipher race, not a client one. QEMU can be told; libnbd cannot.
 */
const SAME_CIPHERS = 'NORMAL:-CHACHA20-POLY1305'

export const qemu: Contender = {
  name: 'QEMU (qemu-img)',
  ours: false,
  note: 'qemu-img bench only does sequential or strided I/O: "random" rows use a stride of 4096 × 104729, which visits every block in a scattered order; copies are qemu-img convert to null-co; QEMU has no multi-conn; qemu-img 7.2 bench takes no TLS credentials (--object), so over TLS only the copy, told to prefer AES-GCM (priority=NORMAL:-CHACHA20-POLY1305) as Node does: GnuTLS picks ChaCha20 here, 16× slower on this CPU (gnutls-cli --benchmark-ciphers)',
  supports: (row) => row.kind !== 'fuse' && (row.connections ?? 1) === 1 && (row.export !== 'tls' || row.kind === 'copy'),
  async run (row, ctx) {
    const e = ctx.exports[row.export]
    if (row.kind === 'copy') {
      const source = e.psk === undefined
        ? [e.uri]
        : ['--object', `tls-creds-psk,id=tls0,endpoint=client,dir=${e.psk.dir},username=${e.psk.username},priority=${SAME_CIPHERS}`,
            '--image-opts', `driver=nbd,server.type=unix,server.path=${e.socket!},tls-creds=tls0`]
      const args = ['convert', '-n', '-W', '-m', String(Math.min(16, row.qd)), ...source, '--target-image-opts', `driver=null-co,size=${e.size}`]
      return { value: bandwidth(e.size, await timed('qemu-img', args, 300_000)) }
    }
    const count = Math.max(200, Math.round(expectedRate(row) * ctx.seconds))
    const args = ['bench', '-f', 'raw', '-c', String(count), '-d', String(row.qd), '-s', String(row.bs)]
    if (row.rw.startsWith('rand')) args.push('-S', String(4096 * 104729))
    if (row.rw.endsWith('write')) args.push('-w', '--pattern=0x5a')
    args.push(e.uri)
    const { stdout } = await runProc('qemu-img', args, (ctx.seconds * 10 + 60) * 1000)
    const match = /Run completed in ([\d.]+) seconds/.exec(stdout)
    if (match === null) throw new Error(`unexpected qemu-img bench output: ${stdout}`)
    return { value: toValue(row, count, Number(match[1])) }
  }
}

export const libnbd: Contender = {
  name: 'libnbd (fio nbd, nbdcopy)',
  ours: false,
  note: 'fio\'s nbd engine (one connection per job: 4 conns = 4 jobs × QD/4); copies are nbdcopy with the same request size and count; the fio engine refuses tls-psk-file (libnbd\'s local-file gate), so over TLS only the copy, where GnuTLS negotiates ChaCha20 (libnbd has no priority setting)',
  supports: (row) => row.kind !== 'fuse' && (row.export !== 'tls' || row.kind === 'copy'),
  async run (row, ctx) {
    const e = ctx.exports[row.export]
    const conns = row.connections ?? 1
    if (row.kind === 'copy') {
      const args = [`--connections=${conns}`, `--threads=${conns}`, `--request-size=${row.bs}`, `--requests=${Math.max(1, row.qd / conns)}`, e.uri, 'null:']
      return { value: bandwidth(e.size, await timed('nbdcopy', args, 300_000)) }
    }
    const args = ['--name=bench', '--ioengine=nbd', `--uri=${e.uri}`, `--rw=${row.rw}`, `--bs=${row.bs}`,
      `--iodepth=${row.qd / conns}`, `--numjobs=${conns}`, '--group_reporting', `--runtime=${ctx.seconds}`, '--time_based',
      '--ramp_time=0.5', '--output-format=json']
    const { stdout } = await runProc('fio', args, (ctx.seconds + 60) * 1000)
    // fio's nbd engine prints "fio: connected to NBD server" before the JSON.
    const json = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: Array<Record<'read' | 'write', { iops: number, bw_bytes: number }>> }
    const side = json.jobs[0]![row.rw.endsWith('write') ? 'write' : 'read']
    return { value: row.unit === 'IOPS' ? side.iops : side.bw_bytes / (1 << 20) }
  }
}
