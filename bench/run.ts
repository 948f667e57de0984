/**
 * `npm run bench [-- --quick] [-- --runs N --seconds S --only ID,ID]`
 *
 * Starts its own nbdkit (a 1 GiB memory export pre-filled with random data, on a Unix
 * socket), then measures every row with every contender in the same run, alternating the
 * order, and reports medians with min–max and the ratio of nbdts to each peer. Progress goes
 * to stderr; the table to stdout; JSON to bench/results/.
 */
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { fioNbd, nbdtsLibrary, qemuImgBench, type Contender, type Target } from './lib/contenders.ts'
import { nbdfuseMount, nbdtsMount, type MountedContender } from './lib/fuse.ts'
import { runProc } from './lib/proc.ts'
import { FUSE_ROWS, LIBRARY_ROWS, type Row } from './lib/rows.ts'
import { format, median } from './lib/stats.ts'

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    runs: { type: 'string' },
    seconds: { type: 'string' },
    only: { type: 'string' }
  }
})
const quick = args.quick === true
const runs = Number(args.runs ?? (quick ? 1 : 3))
const seconds = Number(args.seconds ?? (quick ? 1 : 3))
const only = args.only?.split(',')
const selected = (rows: readonly Row[]): Row[] => rows.filter((r) => only === undefined || only.some((o) => r.id.startsWith(o)))

/** A set of rows, the contenders measured on them, and which one is ours. */
interface Suite {
  readonly name: string
  readonly rows: Row[]
  readonly contenders: Contender[]
  readonly ours: Contender
}
const fuseOurs = nbdtsMount()
const suites: Suite[] = [
  { name: 'library', rows: selected(LIBRARY_ROWS), contenders: [nbdtsLibrary, qemuImgBench, fioNbd], ours: nbdtsLibrary },
  { name: 'fuse', rows: selected(FUSE_ROWS), contenders: [fuseOurs, nbdfuseMount(4)], ours: fuseOurs }
].filter((s) => s.rows.length > 0)
const progress = (text: string): void => { process.stderr.write(`${text}\n`) }

const dir = mkdtempSync(path.join(tmpdir(), 'nbdts-bench-'))
const socket = path.join(dir, 'mem.sock')
const size = quick ? 256 << 20 : 1 << 30
progress(`starting nbdkit memory ${size >> 20}M on ${socket}`)
const server = spawn('nbdkit', ['--exit-with-parent', '-f', '-U', socket, 'memory', String(size)], { stdio: 'inherit' })
const target: Target = { uri: `nbd+unix:///?socket=${socket}`, size }

interface Result { suite: Suite, row: Row, samples: Record<string, number[]>, rss: number[] }
const results: Result[] = []
const mounted: MountedContender[] = []
try {
  for (let i = 0; i < 250 && !existsSync(socket); i++) await sleep(20)
  progress('pre-filling the export with random data (reads must return data, not holes)')
  await runProc('bash', ['-c', `head -c ${size} /dev/urandom | nbdcopy - '${target.uri}'`], 300_000)

  for (const suite of suites) {
    for (const c of suite.contenders) {
      if ('mount' in c) {
        progress(`mounting: ${c.name}`)
        await (c as MountedContender).mount(target, dir)
        mounted.push(c as MountedContender)
      }
    }
    for (const row of suite.rows) {
      const result: Result = { suite, row, samples: {}, rss: [] }
      results.push(result)
      for (let run = 0; run < runs; run++) {
        // Alternate who goes first, so slow drifts of a shared machine hit everyone alike.
        const order = suite.contenders.map((_, i) => suite.contenders[(i + run) % suite.contenders.length]!)
        for (const c of order) {
          if (!c.supports(row)) continue
          const sample = await c.run(row, target, seconds)
          ;(result.samples[c.name] ??= []).push(sample.value)
          if (c === suite.ours && sample.rssMiB !== undefined) result.rss.push(sample.rssMiB)
          progress(`  ${row.id} run ${run + 1}/${runs} ${c.name}: ${format(sample.value)} ${row.unit}`)
        }
      }
    }
    for (const m of mounted.splice(0)) await m.unmount()
  }
} finally {
  for (const m of mounted) await m.unmount().catch(() => {})
  server.kill()
  await new Promise((resolve) => server.once('exit', resolve))
  rmSync(dir, { recursive: true, force: true })
}

// One table per suite: medians with min–max, then ours ÷ each peer.
process.stdout.write(`\nmedian of ${runs} run(s), ${seconds} s each (min–max in brackets); nbdkit memory ${size >> 20} MiB over a Unix socket\n`)
for (const suite of suites) {
  const peers = suite.contenders.filter((c) => c !== suite.ours)
  const header = ['row', ...suite.contenders.map((c) => c.name), ...peers.map((p) => `${suite.ours.name} ÷ ${p.name}`)]
  const lines = results.filter((r) => r.suite === suite).map(({ row, samples }) => {
    const cell = (name: string): string => {
      const v = samples[name]
      if (v === undefined) return '–'
      return `${format(median(v))} (${format(Math.min(...v))}–${format(Math.max(...v))})`
    }
    const ours = median(samples[suite.ours.name] ?? [NaN])
    return [`${row.label} [${row.unit}]`, ...suite.contenders.map((c) => cell(c.name)),
      ...peers.map((p) => samples[p.name] === undefined ? '–' : `${(ours / median(samples[p.name]!)).toFixed(2)}×`)]
  })
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)))
  const print = (cells: string[]): void => { process.stdout.write(`| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |\n`) }
  process.stdout.write(`\n${suite.name}\n`)
  print(header)
  print(widths.map((w) => '-'.repeat(w)))
  for (const l of lines) print(l)
  for (const c of suite.contenders) if (c.note !== undefined) process.stdout.write(`\n${c.name}: ${c.note}\n`)
}

const resultsDir = fileURLToPath(new URL('./results/', import.meta.url))
mkdirSync(resultsDir, { recursive: true })
const json = {
  date: new Date().toISOString(),
  runs,
  seconds,
  server: `nbdkit memory ${size} (Unix socket, pre-filled)`,
  rows: results.map(({ suite, row, samples, rss }) => ({
    suite: suite.name,
    ours: suite.ours.name,
    ...row,
    median: Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, median(v)])),
    samples,
    nbdtsPeakRssMiB: rss.length > 0 ? Math.max(...rss) : undefined
  }))
}
const file = path.join(resultsDir, quick ? 'quick.json' : 'latest.json')
writeFileSync(file, JSON.stringify(json, null, 2) + '\n')
progress(`\nwrote ${file}`)
