/**
 * `node --import tsx bench/scaling.ts [--seconds 2] [--runs 3] [--workloads 4k-randread,1m-read,4k-randwrite]
 *   [--layouts split,shared] [--workers 1,2] [--node-args=--single-threaded-gc] [--report]`
 *
 * Does the library win with more cores? Two shapes of the same load (bench/workers/scaling.ts):
 * today's one Node thread driving N connections of one NbdClient (multi-conn), and an engine per
 * worker thread (N worker_threads, each its own NbdClient over its own connection, the requests
 * in flight split among them), with N = 1 and 2, against its own nbdkit `memory` (1 GiB, random
 * data, Unix socket in a private directory) pinned with taskset:
 *
 *   split   nbdkit on CPU 1, the client on CPU 0: the client's CPU cost per request, free of
 *           the server's, and whether one client core or the server's core is the limit
 *   shared  nbdkit on CPU 1, the client on CPUs 0-1: a second core for the client, shared with
 *           the server (on two cores there is no third one to give it alone)
 *   free    nothing pinned (both on CPUs 0-1), for reference
 *
 * Reports medians per shape and N: the rate, CPU per request of the client process, of its
 * engine threads and of nbdkit, how busy the engine threads and the cores were; then a model of
 * what 8 and 16 cores would give (see bench/README.md, "Cores"). Merges its results into
 * bench/results/scaling.json (one key per workload). Take the CPU lock around it, one workload
 * at a time keeps a run under 3 minutes.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { availableParallelism, tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'
import { runProc } from './lib/proc.ts'
import { format, median } from './lib/stats.ts'
import type { ScalingJob, ScalingResult, Shape } from './workers/scaling.ts'

interface Workload { readonly id: string, readonly rw: ScalingJob['rw'], readonly bs: number, readonly qd: number, readonly title: string }
const WORKLOADS: readonly Workload[] = [
  { id: '4k-randread', rw: 'randread', bs: 4096, qd: 64, title: '4 KiB randread QD 64' },
  { id: '1m-read', rw: 'read', bs: 1 << 20, qd: 16, title: '1 MiB read QD 16' },
  { id: '4k-randwrite', rw: 'randwrite', bs: 4096, qd: 64, title: '4 KiB randwrite QD 64' }
]
const LAYOUTS: Readonly<Record<string, { client: string, server: string, text: string }>> = {
  split: { client: '0', server: '1', text: 'client on CPU 0, nbdkit on CPU 1' },
  shared: { client: '0,1', server: '1', text: 'client on CPUs 0-1, nbdkit on CPU 1' },
  free: { client: '0,1', server: '0,1', text: 'nothing pinned' }
}
const SHAPES: readonly Shape[] = ['multi-conn', 'workers']

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '2' },
    runs: { type: 'string', default: '3' },
    workloads: { type: 'string', default: WORKLOADS.map((w) => w.id).join(',') },
    layouts: { type: 'string', default: 'split,shared' },
    workers: { type: 'string', default: '1,2' },
    /** Flags for the client's node, space-separated (e.g. --single-threaded-gc). */
    'node-args': { type: 'string', default: '' },
    /** Print the tables and the model from bench/results/scaling.json, without measuring. */
    report: { type: 'boolean', default: false }
  }
})
const seconds = Number(args.seconds)
const runs = Number(args.runs)
const workloads = args.workloads.split(',').map((id) => {
  const w = WORKLOADS.find((x) => x.id === id)
  if (w === undefined) throw new Error(`unknown workload ${id} (${WORKLOADS.map((x) => x.id).join(', ')})`)
  return w
})
const layouts = args.layouts.split(',').map((id) => {
  if (LAYOUTS[id] === undefined) throw new Error(`unknown layout ${id} (${Object.keys(LAYOUTS).join(', ')})`)
  return id
})
const counts = args.workers.split(',').map(Number)
const nodeArgs = args['node-args'].split(' ').filter((a) => a !== '')
if (availableParallelism() < 2) throw new Error('needs at least 2 CPUs (the server and the client are pinned apart)')

const bench = path.dirname(fileURLToPath(import.meta.url))
const lib = path.join(bench, '../dist/index.js')
if (!existsSync(lib)) throw new Error('build the library first: npx tsc -p tsconfig.build.json')
const progress = (text: string): void => { process.stderr.write(`[scaling] ${text}\n`) }

interface Sample extends ScalingResult { readonly layout: string, readonly shape: Shape, readonly n: number }
const resultsFile = path.join(bench, 'results/scaling.json')
/** What a run of one workload left in bench/results/scaling.json. */
interface Stored { readonly date: string, readonly seconds: number, readonly runs: number, readonly layouts: readonly string[], readonly nodeArgs?: readonly string[], readonly samples: readonly Sample[] }
/** Runs with other node flags are kept apart from the plain ones. */
const key = (w: Workload): string => [w.id, ...nodeArgs].join(' ')
const stored = (existsSync(resultsFile) ? JSON.parse(readFileSync(resultsFile, 'utf8')) : {}) as Record<string, Stored | undefined>
if (!args.report) {
  const measured = await measure()
  const date = new Date().toISOString()
  for (const w of workloads) stored[key(w)] = { date, seconds, runs, layouts, nodeArgs, samples: measured[w.id]! }
  writeFileSync(resultsFile, JSON.stringify(stored, null, 1) + '\n')
}

/** Every config of every workload, `runs` times, alternating the order. */
async function measure (): Promise<Record<string, Sample[]>> {
  progress('building the workers (bench/.build)')
  await runProc(process.execPath, [path.join(bench, '../node_modules/typescript/bin/tsc'), '-p', path.join(bench, 'tsconfig.workers.json')], 120_000)
  const worker = path.join(bench, '.build/workers/scaling.js')
  const dir = mkdtempSync(path.join(tmpdir(), 'nbdts-scaling-'))
  const socket = path.join(dir, 'mem.sock')
  const pidfile = path.join(dir, 'mem.pid')
  const uri = `nbd+unix:///?socket=${socket}`
  // taskset execs nbdkit: the pid is nbdkit's, and its parent (for --exit-with-parent) is us.
  const server: ChildProcess = spawn('taskset', ['-c', '1', 'nbdkit', '--exit-with-parent', '-f', '-P', pidfile, '-U', socket, 'memory', '1G'], { stdio: ['ignore', 'ignore', 'inherit'] })
  const measured: Record<string, Sample[]> = {}
  try {
    for (let i = 0; i < 500 && !(existsSync(pidfile) && readFileSync(pidfile, 'utf8').trim() !== ''); i++) await sleep(20)
    const serverPid = Number(readFileSync(pidfile, 'utf8'))
    progress('pre-filling the export with random data')
    await runProc('bash', ['-c', `head -c ${1 << 30} /dev/urandom | nbdcopy - '${uri}'`], 300_000)
    const configs = layouts.flatMap((layout) => SHAPES.flatMap((shape) => counts.map((n) => ({ layout, shape, n }))))
    for (const w of workloads) {
      const list: Sample[] = measured[w.id] = []
      for (let run = 0; run < runs; run++) {
        // Alternate who goes first: drift in the machine's load spreads over every config.
        for (const c of run % 2 === 0 ? configs : [...configs].reverse()) {
          const layout = LAYOUTS[c.layout]!
          await runProc('taskset', ['-a', '-p', '-c', layout.server, String(serverPid)], 10_000)
          const job: ScalingJob = { uri, lib, rw: w.rw, bs: w.bs, qd: w.qd, seconds, shape: c.shape, n: c.n, serverPid }
          const { stdout } = await runProc('taskset', ['-c', layout.client, process.execPath, ...nodeArgs, worker, JSON.stringify(job)], (seconds + 60) * 1000)
          const r = JSON.parse(stdout.trim().split('\n').pop()!) as ScalingResult
          list.push({ ...r, ...c })
          progress(`${w.id} run ${run + 1}/${runs} ${c.layout} ${c.shape} ×${c.n}: ${format(rate(w, r))} ${unit(w)}`)
        }
      }
    }
  } finally {
    server.kill()
    rmSync(dir, { recursive: true, force: true })
  }
  return measured
}

function rate (w: Workload, r: ScalingResult): number {
  const perS = r.engines.reduce((a, e) => a + e.ops / e.seconds, 0)
  return w.bs >= 1 << 20 ? perS * w.bs / (1 << 20) : perS
}
function unit (w: Workload): string { return w.bs >= 1 << 20 ? 'MiB/s' : 'IOPS' }

/** Medians of what a config measured; CPU figures are seconds per request. */
function summarize (w: Workload, list: readonly Sample[]) {
  const m = (f: (s: Sample) => number): number => median(list.map(f))
  return {
    rate: m((s) => rate(w, s)),
    min: Math.min(...list.map((s) => rate(w, s))),
    max: Math.max(...list.map((s) => rate(w, s))),
    client: m((s) => s.clientCpuS / s.ops),
    engine: m((s) => s.engines.reduce((a, e) => a + e.cpuS, 0) / s.ops),
    /** The busiest engine thread's share of a core, and its share spent waiting for one. */
    engineBusy: m((s) => Math.max(...s.engines.map((e) => e.cpuS / e.seconds))),
    engineWait: m((s) => Math.max(...s.engines.map((e) => e.waitS / e.seconds))),
    server: m((s) => s.serverCpuS / s.ops),
    serverCores: m((s) => s.serverCpuS / s.seconds),
    clientCores: m((s) => s.clientCpuS / s.seconds),
    coreBusy: [0, 1].map((i) => m((s) => s.coreBusy[i] ?? 0)),
    /** Cores busy with neither the client nor nbdkit (other tenants, interrupts): the noise. */
    others: m((s) => s.coreBusy.reduce((a, b) => a + b, 0) - (s.clientCpuS + s.serverCpuS) / s.seconds)
  }
}
type Summary = ReturnType<typeof summarize>

const us = (s: number): string => (s * 1e6).toFixed(1)
const pct = (x: number): string => `${Math.round(x * 100)}%`
const out: string[] = []
for (const w of workloads) {
  const run = stored[key(w)]
  if (run === undefined) throw new Error(`no results for ${key(w)} in ${resultsFile}`)
  const list = run.samples
  const table: Record<string, Summary> = {}
  out.push(`\n### ${w.title}${nodeArgs.length > 0 ? ` (node ${nodeArgs.join(' ')})` : ''} (${run.runs} runs × ${run.seconds} s, medians; ${run.date.slice(0, 16)})\n`)
  out.push(`| layout | shape | N | ${unit(w)} (min–max) | × multi-conn 1 | client CPU µs/req | engine threads µs/req | busiest engine thread busy / waiting | nbdkit µs/req | nbdkit cores | CPU 0 / 1 busy | others' cores |`)
  out.push('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')
  for (const layout of run.layouts) {
    for (const shape of SHAPES) {
      for (const n of counts) {
        const s = summarize(w, list.filter((x) => x.layout === layout && x.shape === shape && x.n === n))
        table[`${layout}/${shape}/${n}`] = s
        const base = table[`${layout}/multi-conn/${counts[0]}`]!
        out.push(`| ${layout} | ${shape} | ${n} | ${format(s.rate)} (${format(s.min)}–${format(s.max)}) | ${(s.rate / base.rate).toFixed(2)}× | ${us(s.client)} | ${us(s.engine)} | ${pct(s.engineBusy)} / ${pct(s.engineWait)} | ${us(s.server)} | ${s.serverCores.toFixed(2)} | ${pct(s.coreBusy[0]!)} / ${pct(s.coreBusy[1]!)} | ${s.others.toFixed(2)} |`)
      }
    }
  }
  out.push(...model(w, table))
}
process.stdout.write(out.join('\n') + '\n')

/**
 * A model, not a measurement: per-request CPU costs from the split layout (client alone on one
 * core, nbdkit alone on the other), scaled to C cores on the assumption that each cost stays
 * flat (no lock, cache or memory-bandwidth contention grows with the thread count):
 *   one thread (multi-conn): ≤ 1 / (its engine thread's CPU per request): one core, whatever C is
 *   per-thread engines:      ≤ C / (client process + nbdkit CPU per request): the machine's cores,
 *                            shared by the engine threads and nbdkit's; the client's cost taken
 *                            from one worker (its own core: the low end) and from N workers
 *                            sharing one core (switches, V8's helper threads shared: the high end)
 */
function model (w: Workload, table: Record<string, Summary>): string[] {
  const top = counts[counts.length - 1]!
  const mc = table[`split/multi-conn/${top}`]
  const lo = table[`split/workers/${counts[0]}`]
  const hi = table[`split/workers/${top}`]
  if (mc === undefined || lo === undefined || hi === undefined) return ['', '(the model needs the split layout)']
  const scale = w.bs >= 1 << 20 ? w.bs / (1 << 20) : 1
  const lines = ['', `Model (a model, not a measurement: per-request CPU from the split rows; ${unit(w)}):`, '']
  const single = scale / mc.engine
  lines.push(`- one thread, multi-conn ×${top}: its engine thread costs ${us(mc.engine)} µs of CPU per request → at most ${format(single)} on any number of cores (measured: ${format(mc.rate)}, the thread ${pct(mc.engineBusy)} busy)`)
  const bound = (c: number, s: Summary): number => c * scale / (s.client + s.server)
  for (const c of [2, 8, 16]) {
    const [a, b] = [bound(c, hi), bound(c, lo)]
    lines.push(`- ${c} cores, an engine per worker thread: ${us(hi.client)}–${us(lo.client)} µs client + ${us(hi.server)}–${us(lo.server)} µs nbdkit per request → at most ${format(a)}–${format(b)} (${(a / single).toFixed(1)}–${(b / single).toFixed(1)}× one thread's ceiling), with ${Math.ceil(a * hi.client / scale)}–${Math.ceil(b * lo.client / scale)} cores' worth of engine threads and ${(a * hi.server / scale).toFixed(1)}–${(b * lo.server / scale).toFixed(1)} of nbdkit`)
  }
  return lines
}
