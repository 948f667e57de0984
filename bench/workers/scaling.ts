/**
 * The client side of one bench/scaling.ts measurement, in its own process (pinned by the
 * harness with taskset). Two shapes of the same load, `qd` requests in flight in all:
 *
 *   multi-conn  today's: one NbdClient with `n` connections, driven from the main thread
 *   workers     an engine per worker thread: `n` worker_threads, each with its own NbdClient
 *               over its own connection and qd/n of the requests
 *
 * Each engine thread reads its own on-CPU time (/proc/thread-self/schedstat) around its timed
 * loop; the main thread reads the process's CPU, nbdkit's and each core's around the window.
 * Loads the library from the built dist/ (or `lib`), as a user would.
 */
import { readFileSync } from 'node:fs'
import { pathToFileURL } from 'node:url'
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads'
import { ioLoop } from '../lib/io-loop.ts'

export type Shape = 'multi-conn' | 'workers'

export interface ScalingJob {
  readonly uri: string
  /** The package entry to load (dist/index.js). */
  readonly lib: string
  readonly rw: 'randread' | 'randwrite' | 'read'
  readonly bs: number
  /** Requests in flight, in all. */
  readonly qd: number
  readonly seconds: number
  readonly shape: Shape
  /** Connections (multi-conn) or worker threads (workers). */
  readonly n: number
  /** nbdkit's pid, to read its CPU time over the window. */
  readonly serverPid: number
  /** Client options on top of the bench's (e.g. replayLog: 0). */
  readonly options?: Readonly<Record<string, number | string | boolean>>
}

/** One engine thread's part of the load. */
interface Load {
  readonly uri: string
  readonly lib: string
  readonly rw: ScalingJob['rw']
  readonly bs: number
  readonly qd: number
  readonly connections: number
  readonly seconds: number
  readonly options?: ScalingJob['options']
}

export interface EngineResult {
  readonly ops: number
  readonly seconds: number
  /** This thread's time on a CPU, and waiting for one (run queue), over its timed loop. */
  readonly cpuS: number
  readonly waitS: number
}

export interface ScalingResult {
  readonly ops: number
  /** The window: from the go to the last engine's end. */
  readonly seconds: number
  readonly engines: readonly EngineResult[]
  /** The whole client process (every thread: engines, main, libuv pool, GC helpers). */
  readonly clientCpuS: number
  readonly serverCpuS: number
  /** Each core's busy share over the window (0..1), from /proc/stat. */
  readonly coreBusy: readonly number[]
}

function threadSched (): { cpu: number, wait: number } {
  const [cpu, wait] = readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ').map(Number)
  return { cpu: cpu! / 1e9, wait: wait! / 1e9 }
}

/** utime + stime of a process, seconds (clock ticks of 10 ms). */
function processCpu (pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) / 100
}

function cores (): Array<{ busy: number, total: number }> {
  return readFileSync('/proc/stat', 'utf8').split('\n').filter((l) => /^cpu\d/.test(l)).map((l) => {
    const t = l.split(/\s+/).slice(1).map(Number)
    const total = t.slice(0, 8).reduce((a, b) => a + b, 0)
    return { busy: total - t[3]! - t[4]!, total }
  })
}

/** Connects, warms up, waits for `go`, runs the timed loop. */
async function runEngine (load: Load, ready: () => Promise<void>): Promise<EngineResult> {
  const { NbdClient } = await import(pathToFileURL(load.lib).href) as typeof import('nbdts')
  const client = await NbdClient.connect(load.uri, { maxInFlight: Math.ceil(load.qd / load.connections), connections: load.connections, ...load.options })
  const run = ioLoop(client, load)
  // Warm up (JIT, socket buffers), then wait for every engine to be ready.
  await run(500)
  await ready()
  const before = threadSched()
  const started = performance.now()
  const ops = await run(load.seconds * 1000)
  const seconds = (performance.now() - started) / 1000
  const after = threadSched()
  await client.close()
  return { ops, seconds, cpuS: after.cpu - before.cpu, waitS: after.wait - before.wait }
}

async function main (job: ScalingJob): Promise<ScalingResult> {
  const load = (qd: number, connections: number): Load => ({ uri: job.uri, lib: job.lib, rw: job.rw, bs: job.bs, qd, connections, seconds: job.seconds, ...(job.options !== undefined ? { options: job.options } : {}) })
  let snap: { client: NodeJS.CpuUsage, server: number, cores: ReturnType<typeof cores>, t: number } | undefined
  const take = (): NonNullable<typeof snap> => ({ client: process.cpuUsage(), server: processCpu(job.serverPid), cores: cores(), t: performance.now() })
  let engines: EngineResult[]
  if (job.shape === 'multi-conn') {
    engines = [await runEngine(load(job.qd, job.n), async () => { snap = take() })]
  } else {
    const workers = Array.from({ length: job.n }, () => new Worker(new URL(import.meta.url), { workerData: load(job.qd / job.n, 1) }))
    const readies = workers.map((w) => new Promise<void>((resolve, reject) => {
      w.once('error', reject)
      w.once('message', () => { resolve() })
    }))
    await Promise.all(readies)
    const results = workers.map((w) => new Promise<EngineResult>((resolve, reject) => {
      w.once('error', reject)
      w.once('message', (r: EngineResult) => { resolve(r) })
    }))
    snap = take()
    for (const w of workers) w.postMessage('go')
    engines = await Promise.all(results)
  }
  const end = take()
  const start = snap!
  const cpu = process.cpuUsage(start.client)
  return {
    ops: engines.reduce((a, e) => a + e.ops, 0),
    seconds: (end.t - start.t) / 1000,
    engines,
    clientCpuS: (cpu.user + cpu.system) / 1e6,
    serverCpuS: end.server - start.server,
    coreBusy: end.cores.map((c, i) => (c.busy - start.cores[i]!.busy) / Math.max(1, c.total - start.cores[i]!.total))
  }
}

if (isMainThread) {
  const result = await main(JSON.parse(process.argv[2]!) as ScalingJob)
  process.stdout.write(JSON.stringify(result) + '\n')
} else {
  const port = parentPort!
  const result = await runEngine(workerData as Load, async () => {
    const go = new Promise<void>((resolve) => { port.once('message', () => { resolve() }) })
    port.postMessage('ready')
    await go
  })
  port.postMessage(result)
}
