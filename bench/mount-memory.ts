/**
 * The mount daemon's peak memory, measured the way the FUSE suite loads it: an nbdkit `memory`
 * export of 1 GiB on a private Unix socket, mounted with the built CLI (`nbdts mount`, its
 * defaults), then fio on the mounted file (libaio, O_DIRECT):
 *
 *   1. 1 GiB of sequential 1 MiB writes, QD 16
 *   2. 6 s of 1 MiB random reads, QD 16
 *   3. 4 s of 4 KiB random reads, QD 16
 *
 * After each phase the daemon's VmHWM (peak RSS) and VmRSS are read from /proc/PID/status; the
 * daemon is unmounted at the end. Not a test: a measurement to repeat before and after a change.
 *
 *   node --import tsx bench/mount-memory.ts [--runs 2] [--cli OTHER/dist/cli/main.js]
 *        [--node-flag --max-semi-space-size=2] [--env NAME=VALUE] [-o MOUNT_OPTION] [--sample]
 *
 * `--node-flag` and `--env` reach the daemon: `nbdts mount` starts it with its own execArgv and
 * environment. `--sample` also loads a sampler into the daemon (NODE_OPTIONS=--require) that
 * records process.memoryUsage() every 100 ms, and prints the largest of each field per phase.
 * `--maps` prints the daemon's largest mappings by resident size after each phase (smaps).
 * `--server file` serves a 1 GiB file in the temp directory (`nbdkit file`: a FLUSH is an
 * fdatasync on this machine's disk) instead of `memory`, for what FLUSHes cost on storage.
 */
import { spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '2' },
    cli: { type: 'string', default: fileURLToPath(new URL('../dist/cli/main.js', import.meta.url)) },
    'node-flag': { type: 'string', multiple: true, default: [] },
    env: { type: 'string', multiple: true, default: [] },
    o: { type: 'string', short: 'o', multiple: true, default: [] },
    sample: { type: 'boolean', default: false },
    maps: { type: 'boolean', default: false },
    server: { type: 'string', default: 'memory' },
    label: { type: 'string', default: '' }
  }
})

interface Phase {
  readonly name: string
  readonly args: readonly string[]
}

const PHASES: readonly Phase[] = [
  { name: 'write 1M QD16 1 GiB', args: ['--rw=write', '--bs=1M', '--size=1G'] },
  { name: 'randread 1M QD16 6 s', args: ['--rw=randread', '--bs=1M', '--size=1G', '--runtime=6', '--time_based'] },
  { name: 'randread 4K QD16 4 s', args: ['--rw=randread', '--bs=4k', '--size=1G', '--runtime=4', '--time_based'] }
]

const SAMPLER = `
const { writeFileSync, appendFileSync } = require('node:fs')
const file = process.env.NBDTS_MEM_SAMPLES + '/' + process.pid + '.jsonl'
const timer = setInterval(() => {
  const m = process.memoryUsage()
  appendFileSync(file, JSON.stringify({ t: Date.now(), rss: m.rss, heapTotal: m.heapTotal, heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers }) + '\\n')
}, 100)
timer.unref()
`

function status (pid: number): { hwm: number, rss: number } {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8')
  const kb = (field: string): number => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(text)?.[1] ?? NaN)
  return { hwm: kb('VmHWM') / 1024, rss: kb('VmRSS') / 1024 }
}

function run (command: string, args: readonly string[], env?: NodeJS.ProcessEnv): string {
  const r = spawnSync(command, args, { encoding: 'utf8', timeout: 300_000, ...(env !== undefined && { env }) })
  if (r.error !== undefined) throw r.error
  if (r.status !== 0) throw new Error(`${command} ${args.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr.trim()}`)
  return r.stdout
}

interface PhaseResult {
  readonly name: string
  readonly hwm: number
  readonly rss: number
  /** MiB/s or IOPS */
  readonly rate: string
  readonly sampled?: Record<string, number>
}

async function once (): Promise<PhaseResult[]> {
  const dir = mkdtempSync(path.join(tmpdir(), 'nbdts-mount-memory-'))
  const socket = path.join(dir, 'nbdkit.sock')
  const serverPid = path.join(dir, 'nbdkit.pid')
  const file = path.join(dir, 'disk.img')
  const pidfile = path.join(dir, 'daemon.pid')
  const image = path.join(dir, 'server.img')
  if (values.server === 'file') run('truncate', ['-s', '1G', image])
  else if (values.server !== 'memory') throw new Error('--server is memory or file')
  const plugin = values.server === 'file' ? ['file', `file=${image}`] : ['memory', '1G']
  const server = spawn('nbdkit', ['--exit-with-parent', '-U', socket, '-P', serverPid, ...plugin], { stdio: 'inherit' })
  let mounted = false
  try {
    for (let i = 0; i < 250 && !existsSync(serverPid); i++) await sleep(20)
    if (!existsSync(serverPid)) throw new Error('nbdkit did not start')
    writeFileSync(file, '')
    const env: NodeJS.ProcessEnv = { ...process.env }
    for (const pair of values.env) {
      const at = pair.indexOf('=')
      env[pair.slice(0, at)] = pair.slice(at + 1)
    }
    if (values.sample) {
      writeFileSync(path.join(dir, 'sampler.cjs'), SAMPLER)
      env.NBDTS_MEM_SAMPLES = dir
      env.NODE_OPTIONS = `${env.NODE_OPTIONS ?? ''} --require ${path.join(dir, 'sampler.cjs')}`.trim()
    }
    run(process.execPath, [...values['node-flag'], values.cli, 'mount', `nbd+unix:///?socket=${socket}`, file, '--pidfile', pidfile,
      '--control-socket', path.join(dir, 'control.sock'), '--log-file', path.join(dir, 'daemon.log'), ...values.o.flatMap((o) => ['-o', o])], env)
    mounted = true
    const pid = Number(readFileSync(pidfile, 'utf8').trim())
    const results: PhaseResult[] = [{ name: 'mounted', ...status(pid), rate: '' }]
    for (const phase of PHASES) {
      const started = Date.now()
      const out = run('fio', ['--name=mem', `--filename=${file}`, '--ioengine=libaio', '--direct=1', '--iodepth=16', '--output-format=json', ...phase.args])
      const json = JSON.parse(out.slice(out.indexOf('{'))) as { jobs: Array<Record<'read' | 'write', { iops: number, bw_bytes: number }>> }
      const side = json.jobs[0]![phase.args.includes('--rw=write') ? 'write' : 'read']
      const rate = phase.args.includes('--bs=4k') ? `${Math.round(side.iops)} IOPS` : `${Math.round(side.bw_bytes / (1 << 20))} MiB/s`
      results.push({ name: phase.name, ...status(pid), rate, ...(values.sample && { sampled: sampled(dir, pid, started) }) })
      if (values.maps) process.stdout.write(`  after ${phase.name}: ${largestMappings(pid)}\n`)
    }
    run(process.execPath, [values.cli, 'umount', file])
    mounted = false
    const gone = /gone; client (\{.*?\}); fuse/.exec(readFileSync(path.join(dir, 'daemon.log'), 'utf8'))
    // NBD FLUSHes sent (one per connection each time): what a smaller replay ring costs.
    if (gone !== null) process.stdout.write(`  NBD FLUSH requests: ${(JSON.parse(gone[1]!) as { requests: { flush: number } }).requests.flush}\n`)
    return results
  } finally {
    if (mounted) spawnSync(process.execPath, [values.cli, 'umount', '--force', file])
    server.kill()
    rmSync(dir, { recursive: true, force: true })
  }
}

/** The mappings holding the most resident memory: "size/rss MiB [name]", largest first. */
function largestMappings (pid: number, count = 16): string {
  const maps: Array<{ what: string, size: number, rss: number }> = []
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$/.exec(line)
    if (head !== null) {
      maps.push({ what: head[3] === '' ? 'anon' : path.basename(head[3]!), size: (parseInt(head[2]!, 16) - parseInt(head[1]!, 16)) / (1 << 20), rss: 0 })
      continue
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line)
    if (rss !== null) maps[maps.length - 1]!.rss = Number(rss[1]) / 1024
  }
  const total = maps.reduce((sum, m) => sum + m.rss, 0)
  return `rss ${total.toFixed(0)} MiB; ` + maps.sort((a, b) => b.rss - a.rss).slice(0, count).map((m) => `${m.size.toFixed(0)}/${m.rss.toFixed(0)} ${m.what}`).join(', ')
}

/** The largest of each memoryUsage() field since `since`, MiB. */
function sampled (dir: string, pid: number, since: number): Record<string, number> {
  const max: Record<string, number> = {}
  const samples = path.join(dir, `${pid}.jsonl`)
  if (!existsSync(samples)) return max
  for (const line of readFileSync(samples, 'utf8').split('\n')) {
    if (line === '') continue
    const s = JSON.parse(line) as Record<string, number>
    if (s.t! < since) continue
    for (const [key, value] of Object.entries(s)) if (key !== 't') max[key] = Math.max(max[key] ?? 0, value / (1 << 20))
  }
  return max
}

const mib = (n: number): string => n.toFixed(0)
const peaks: number[] = []
for (let r = 1; r <= Number(values.runs); r++) {
  const results = await once()
  process.stdout.write(`\nrun ${r}${values.label === '' ? '' : ` (${values.label})`}\n`)
  for (const p of results) {
    const extra = p.sampled === undefined ? '' : `  max: ${Object.entries(p.sampled).map(([k, v]) => `${k} ${mib(v)}`).join(', ')}`
    process.stdout.write(`  ${p.name.padEnd(22)} VmHWM ${mib(p.hwm).padStart(4)} MiB  VmRSS ${mib(p.rss).padStart(4)} MiB  ${p.rate.padStart(11)}${extra}\n`)
  }
  peaks.push(results[results.length - 1]!.hwm)
}
process.stdout.write(`\npeak RSS${values.label === '' ? '' : ` (${values.label})`}: ${peaks.map(mib).join(', ')} MiB\n`)
