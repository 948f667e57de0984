/**
 * Runs simulated schedules (test/sim): `npm run simulate -- --seeds N [--from S] [--seed S]`.
 * A failing schedule prints its seed, its options and its last steps; `--seed S` replays it.
 */
import { parseArgs } from 'node:util'
import { runSchedule } from '../test/sim/schedule.ts'

const { values } = parseArgs({
  options: {
    seeds: { type: 'string', default: '10000' },
    from: { type: 'string', default: '1' },
    seed: { type: 'string' },
    'keep-going': { type: 'boolean', default: false },
    quiet: { type: 'boolean', default: false }
  }
})

const first = values.seed !== undefined ? Number(values.seed) : Number(values.from)
const count = values.seed !== undefined ? 1 : Number(values.seeds)
const started = Date.now()
let failed = 0
let steps = 0
let calls = 0
let virtualMs = 0
for (let seed = first; seed < first + count; seed++) {
  const r = await runSchedule(seed)
  steps += r.steps
  calls += r.calls
  virtualMs += r.virtualMs
  if (r.failure !== undefined) {
    failed++
    console.log(`seed ${seed} FAILED: ${r.failure}\n  options: ${r.config}\n  last steps:\n    ${r.trace.join('\n    ')}`)
    if (!values['keep-going']) break
  }
  const done = seed - first + 1
  if (!values.quiet && done % 1000 === 0) console.error(`${done} schedules, ${failed} failed, ${((Date.now() - started) / 1000).toFixed(0)} s`)
}
const secs = (Date.now() - started) / 1000
console.log(`${count} schedules from seed ${first}: ${failed} failed; ${calls} calls, ${steps} steps, ${(virtualMs / 3600_000).toFixed(1)} h of virtual time, in ${secs.toFixed(1)} s`)
process.exitCode = failed > 0 ? 1 : 0
