/**
 * The deterministic simulation (test/sim): a fixed budget of seeded schedules against the
 * simulated server, each judged by the checker. `npm run simulate -- --seeds N` runs more; a
 * failure prints its seed, which replays exactly (`npm run simulate -- --seed S`).
 */
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { runSchedule } from './schedule.ts'

/** Seeds run by `npm test`: at least 2,000 schedules. */
const SEEDS = 2000

test(`${SEEDS} simulated schedules: every FLUSH vouches only for what the server holds, reads are never stale, every wait ends`, async () => {
  const failures: string[] = []
  for (let seed = 1; seed <= SEEDS && failures.length < 3; seed++) {
    const r = await runSchedule(seed)
    if (r.failure !== undefined) failures.push(`seed ${seed}: ${r.failure}\n  options: ${r.config}\n  last steps:\n    ${r.trace.join('\n    ')}`)
  }
  assert.deepEqual(failures, [], 'replay with: npm run simulate -- --seed S')
})

test('the same seed replays the same schedule', async () => {
  const a = await runSchedule(216)
  const b = await runSchedule(216)
  assert.deepEqual(a.trace, b.trace)
  assert.equal(a.steps, b.steps)
})
