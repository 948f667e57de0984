/**
 * `npm run bench [-- --quick] [-- --runs N --seconds S --only PREFIX,PREFIX --suite NAME,NAME]`
 *   `[-- --baseline DIR] [-- --mount-variants 'OPTS;OPTS']`
 *
 * Starts its own nbdkit servers (lib/exports.ts), then measures every row with every contender
 * of its suite in the same run, alternating who goes first, and reports medians with min–max
 * and the ratio of nbdts to each peer. Progress goes to stderr; the table to stdout; JSON and
 * an SVG chart to bench/results/ (latest.* for a full run, quick.* for --quick, partial.* when
 * --suite or --only leave rows out: only a full run replaces the published results).
 */
import { execFileSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { libnbd, nbdtsBaseline, nbdtsCopy, nbdtsCopyBaseline, nbdtsLibrary, nbdtsNoReplayLog, qemu, vates, type Contender, type RunContext } from './lib/contenders.ts'
import { startServers } from './lib/exports.ts'
import { nbdfuse, nbdtsMount } from './lib/fuse.ts'
import { runProc } from './lib/proc.ts'
import { table, svg, toJson, type RowResult, type SuiteResult } from './lib/report.ts'
import { ROWS, type SuiteName } from './lib/rows.ts'
import { format } from './lib/stats.ts'

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    runs: { type: 'string' },
    seconds: { type: 'string' },
    only: { type: 'string' },
    suite: { type: 'string' },
    baseline: { type: 'string' },
    'mount-variants': { type: 'string' }
  }
})
const quick = args.quick === true
const runs = Number(args.runs ?? (quick ? 1 : 3))
const seconds = Number(args.seconds ?? (quick ? 1 : 3))
const only = args.only?.split(',')
const suiteFilter = args.suite?.split(',')
const progress = (text: string): void => { process.stderr.write(`${text}\n`) }

// --baseline DIR: another build of nbdts (a worktree at an older commit, `npm ci` and built) runs
// as a reference contender in the library, tcp, multi-conn and fuse suites (and its `nbdts copy` in
// the copy, tls and multi-conn suites): before/after in one run.
const baseline = args.baseline === undefined
  ? undefined
  : { dir: path.resolve(args.baseline), label: execFileSync('git', ['-C', args.baseline, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim() }
// --mount-variants 'reader=thread;busy_poll=0': this build mounted with other -o settings, each
// a reference contender of the fuse suite (the -C 1 mount is left out then, to keep runs short).
const variants = args['mount-variants']?.split(';').filter((v) => v !== '') ?? []
const before = (c: (dir: string, label: string) => Contender): Contender[] => baseline === undefined ? [] : [c(baseline.dir, baseline.label)]

const SUITES: ReadonlyArray<{ name: SuiteName, contenders: Contender[] }> = [
  { name: 'library', contenders: [nbdtsLibrary, qemu, libnbd, vates, nbdtsNoReplayLog, ...before(nbdtsBaseline)] },
  { name: 'tcp', contenders: [nbdtsLibrary, qemu, libnbd, vates, nbdtsNoReplayLog, ...before(nbdtsBaseline)] },
  { name: 'tls', contenders: [nbdtsLibrary, nbdtsCopy, qemu, libnbd, ...before(nbdtsCopyBaseline)] },
  { name: 'copy', contenders: [nbdtsLibrary, nbdtsCopy, qemu, libnbd, vates, ...before(nbdtsCopyBaseline)] },
  { name: 'multi-conn', contenders: [nbdtsLibrary, nbdtsCopy, libnbd, vates, ...before(nbdtsBaseline), ...before(nbdtsCopyBaseline)] },
  {
    name: 'fuse',
    contenders: [nbdtsMount(), ...(variants.length > 0 ? [] : [nbdtsMount(1)]), nbdfuse(4), ...before((dir, label) => nbdtsMount('auto', { dir, label })),
      ...variants.map((options) => nbdtsMount('auto', undefined, options))]
  }
]

const bench = fileURLToPath(new URL('.', import.meta.url))
progress('building the workers (bench/.build)')
await runProc(process.execPath, [path.join(bench, '../node_modules/typescript/bin/tsc'), '-p', path.join(bench, 'tsconfig.workers.json')], 120_000)

const dir = mkdtempSync(path.join(tmpdir(), 'nbdts-bench-'))
const size = quick ? 256 << 20 : 1 << 30
progress(`starting nbdkit servers (${size >> 20} MiB each) in ${dir}`)
const servers = await startServers(dir, size, progress)
const ctx: RunContext = { exports: servers.exports, seconds, dir }
const started = Date.now()

const results: SuiteResult[] = []
const live: Contender[] = []
try {
  for (const { name, contenders } of SUITES) {
    if (suiteFilter !== undefined && !suiteFilter.includes(name)) continue
    const rows = ROWS.filter((r) => r.suite === name && (!quick || r.quick === true) &&
      (only === undefined || only.some((o) => r.id.startsWith(o))))
    if (rows.length === 0) continue
    const used = contenders.filter((c) => rows.some((r) => c.supports(r)))
    const suite: SuiteResult = { name, contenders: used, rows: [], mountRssMiB: {} }
    results.push(suite)
    progress(`\n${name}`)
    for (const c of used) {
      if (c.setUp === undefined) continue
      progress(`  mounting: ${c.name}`)
      await c.setUp(ctx)
      live.push(c)
    }
    for (const row of rows) {
      const result: RowResult = { row, samples: {} }
      suite.rows.push(result)
      const here = used.filter((c) => c.supports(row))
      for (let run = 0; run < runs; run++) {
        // Alternate who goes first, so slow drifts of a shared machine hit everyone alike.
        const order = here.map((_, i) => here[(i + run) % here.length]!)
        for (const c of order) {
          const sample = await c.run(row, ctx)
          ;(result.samples[c.name] ??= []).push(sample.value)
          if (c.ours && sample.rssMiB !== undefined) result.rssMiB = Math.max(result.rssMiB ?? 0, sample.rssMiB)
          progress(`  ${row.id} run ${run + 1}/${runs} ${c.name}: ${format(sample.value)} ${row.unit}`)
        }
      }
    }
    for (const c of live.splice(0)) {
      await c.tearDown?.()
      const rss = c.peakRssMiB?.()
      if (rss !== undefined) suite.mountRssMiB[c.name] = rss
    }
  }
} finally {
  for (const c of live) await c.tearDown?.().catch(() => {})
  await servers.stop()
  rmSync(dir, { recursive: true, force: true })
}

const header = `median of ${runs} run(s), ${seconds} s each (min–max in brackets); ratios are medians, ours ÷ peer`
process.stdout.write(`\n${header}\n`)
for (const e of Object.values(servers.exports)) process.stdout.write(`  ${e.name}: ${e.description}\n`)
for (const suite of results) process.stdout.write(table(suite))

const resultsDir = path.join(bench, 'results')
mkdirSync(resultsDir, { recursive: true })
const base = path.join(resultsDir, quick ? 'quick' : suiteFilter !== undefined || only !== undefined ? 'partial' : 'latest')
const meta = {
  date: new Date().toISOString(),
  node: process.version,
  runs,
  seconds,
  minutes: Math.round((Date.now() - started) / 6000) / 10,
  exports: Object.fromEntries(Object.values(servers.exports).map((e) => [e.name, e.description]))
}
writeFileSync(`${base}.json`, JSON.stringify(toJson(results, meta), null, 2) + '\n')
writeFileSync(`${base}.svg`, svg(results, `nbdts bench ${meta.date.slice(0, 10)}: ${header}`))
progress(`\nwrote ${base}.json and ${base}.svg`)
