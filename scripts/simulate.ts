/**
 * Runs simulated schedules (test/sim): `npm run simulate -- --seeds N [--from S] [--jobs J]`,
 * or `--seed S` to replay one. A failing schedule prints its seed, its options and its last
 * steps. With --jobs, J child processes take every J-th seed each.
 */
import { fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { runSchedule, type ScheduleResult } from '../test/sim/schedule.ts'

interface Slice {
  readonly first: number
  readonly count: number
  readonly step: number
  readonly keepGoing: boolean
}

interface Report {
  readonly done: number
  readonly failed: number
  readonly steps: number
  readonly calls: number
  readonly virtualMs: number
  readonly failures: string[]
  readonly finished: boolean
}

function describe (r: ScheduleResult): string {
  return `seed ${r.seed} FAILED: ${r.failure}\n  options: ${r.config}\n  last steps:\n    ${r.trace.join('\n    ')}`
}

/** Runs the seeds first, first + step, ... (count of them); reports every 500. */
async function runSlice (slice: Slice, report: (r: Report) => void): Promise<void> {
  let r = { done: 0, failed: 0, steps: 0, calls: 0, virtualMs: 0, failures: [] as string[], finished: false }
  for (let i = 0; i < slice.count; i++) {
    const result = await runSchedule(slice.first + i * slice.step)
    r.done++
    r.steps += result.steps
    r.calls += result.calls
    r.virtualMs += result.virtualMs
    if (result.failure !== undefined) {
      r.failed++
      r.failures.push(describe(result))
      if (!slice.keepGoing) break
    }
    if (r.done % 500 === 0) {
      report(r)
      r = { done: 0, failed: 0, steps: 0, calls: 0, virtualMs: 0, failures: [], finished: false }
    }
  }
  report({ ...r, finished: true })
}

const slice = process.env.NBDTS_SIM_SLICE
if (slice !== undefined) {
  await runSlice(JSON.parse(slice) as Slice, (r) => { process.send!(r) })
  process.disconnect()
} else {
  const { values } = parseArgs({
    options: {
      seeds: { type: 'string', default: '10000' },
      from: { type: 'string', default: '1' },
      seed: { type: 'string' },
      jobs: { type: 'string', default: '1' },
      'keep-going': { type: 'boolean', default: false },
      quiet: { type: 'boolean', default: false }
    }
  })
  const first = values.seed !== undefined ? Number(values.seed) : Number(values.from)
  const count = values.seed !== undefined ? 1 : Number(values.seeds)
  const jobs = Math.max(1, Math.min(Number(values.jobs), count))
  const keepGoing = values['keep-going'] === true
  const started = Date.now()
  const total = { done: 0, failed: 0, steps: 0, calls: 0, virtualMs: 0 }
  let lastShown = 0
  const add = (r: Report): void => {
    total.done += r.done
    total.failed += r.failed
    total.steps += r.steps
    total.calls += r.calls
    total.virtualMs += r.virtualMs
    for (const f of r.failures) console.log(f)
    if (!values.quiet && total.done - lastShown >= 10_000) {
      lastShown = total.done
      console.error(`${total.done} schedules, ${total.failed} failed, ${((Date.now() - started) / 1000).toFixed(0)} s`)
    }
  }
  if (jobs === 1) {
    await runSlice({ first, count, step: 1, keepGoing }, add)
  } else {
    await Promise.all(Array.from({ length: jobs }, (_, j) => new Promise<void>((resolve, reject) => {
      const slice: Slice = { first: first + j, count: Math.floor(count / jobs) + (j < count % jobs ? 1 : 0), step: jobs, keepGoing }
      const child = fork(fileURLToPath(import.meta.url), [], { execArgv: ['--import', 'tsx'], env: { ...process.env, NBDTS_SIM_SLICE: JSON.stringify(slice) } })
      child.on('message', (r) => { add(r as Report) })
      child.on('error', reject)
      child.on('exit', (code) => { if (code === 0) resolve(); else reject(new Error(`a simulation process exited with ${code}`)) })
    })))
  }
  const secs = (Date.now() - started) / 1000
  console.log(`${total.done} schedules from seed ${first}: ${total.failed} failed; ${total.calls} calls, ${total.steps} steps, ${(total.virtualMs / 3600_000).toFixed(1)} h of virtual time, in ${secs.toFixed(1)} s`)
  process.exitCode = total.failed > 0 ? 1 : 0
}
