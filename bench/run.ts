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
import { runProc } from './lib/proc.ts'
import { LIBRARY_ROWS, type Row } from './lib/rows.ts'
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
const rows = LIBRARY_ROWS.filter((r) => only === undefined || only.includes(r.id))
const contenders: Contender[] = [nbdtsLibrary, qemuImgBench, fioNbd]
const progress = (text: string): void => { process.stderr.write(`${text}\n`) }

const dir = mkdtempSync(path.join(tmpdir(), 'nbdts-bench-'))
const socket = path.join(dir, 'mem.sock')
const size = quick ? 256 << 20 : 1 << 30
progress(`starting nbdkit memory ${size >> 20}M on ${socket}`)
const server = spawn('nbdkit', ['--exit-with-parent', '-f', '-U', socket, 'memory', String(size)], { stdio: 'inherit' })
const target: Target = { uri: `nbd+unix:///?socket=${socket}`, size }

interface Result { row: Row, samples: Record<string, number[]>, rss: number[] }
const results: Result[] = []
try {
  for (let i = 0; i < 250 && !existsSync(socket); i++) await sleep(20)
  progress('pre-filling the export with random data (reads must return data, not holes)')
  await runProc('bash', ['-c', `head -c ${size} /dev/urandom | nbdcopy - '${target.uri}'`], 300_000)

  for (const row of rows) {
    const result: Result = { row, samples: {}, rss: [] }
    results.push(result)
    for (let run = 0; run < runs; run++) {
      // Alternate who goes first, so slow drifts of a shared machine hit everyone alike.
      const order = contenders.map((_, i) => contenders[(i + run) % contenders.length]!)
      for (const c of order) {
        if (!c.supports(row)) continue
        const sample = await c.run(row, target, seconds)
        ;(result.samples[c.name] ??= []).push(sample.value)
        if (c === nbdtsLibrary && sample.rssMiB !== undefined) result.rss.push(sample.rssMiB)
        progress(`  ${row.id} run ${run + 1}/${runs} ${c.name}: ${format(sample.value)} ${row.unit}`)
      }
    }
  }
} finally {
  server.kill()
  await new Promise((resolve) => server.once('exit', resolve))
  rmSync(dir, { recursive: true, force: true })
}

// Table: medians with min–max, then nbdts ÷ each peer.
const peers = contenders.filter((c) => c !== nbdtsLibrary)
const header = ['row', ...contenders.map((c) => c.name), ...peers.map((p) => `nbdts ÷ ${p.name}`)]
const lines = results.map(({ row, samples }) => {
  const cell = (name: string): string => {
    const s = samples[name]
    if (s === undefined) return '–'
    return `${format(median(s))} (${format(Math.min(...s))}–${format(Math.max(...s))})`
  }
  const ours = median(samples[nbdtsLibrary.name] ?? [NaN])
  return [`${row.label} [${row.unit}]`, ...contenders.map((c) => cell(c.name)),
    ...peers.map((p) => samples[p.name] === undefined ? '–' : `${(ours / median(samples[p.name]!)).toFixed(2)}×`)]
})
const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)))
const print = (cells: string[]): void => { process.stdout.write(`| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |\n`) }
process.stdout.write(`\nmedian of ${runs} run(s), ${seconds} s each (min–max in brackets); nbdkit memory ${size >> 20} MiB over a Unix socket\n`)
print(header)
print(widths.map((w) => '-'.repeat(w)))
for (const l of lines) print(l)
for (const c of contenders) if (c.note !== undefined) process.stdout.write(`\n${c.name}: ${c.note}\n`)

const resultsDir = fileURLToPath(new URL('./results/', import.meta.url))
mkdirSync(resultsDir, { recursive: true })
const json = {
  date: new Date().toISOString(),
  runs,
  seconds,
  server: `nbdkit memory ${size} (Unix socket, pre-filled)`,
  rows: results.map(({ row, samples, rss }) => ({
    ...row,
    median: Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, median(v)])),
    samples,
    nbdtsPeakRssMiB: rss.length > 0 ? Math.max(...rss) : undefined
  }))
}
const file = path.join(resultsDir, quick ? 'quick.json' : 'latest.json')
writeFileSync(file, JSON.stringify(json, null, 2) + '\n')
progress(`\nwrote ${file}`)
