/**
 * The nbdts side of a library row, in its own process like every other contender. Imports the
 * built package (dist/), as a user would.
 *
 *   io:   connect, warm up, run `qd` request loops for `seconds`, report operations done
 *   copy: read the whole export to nowhere, `qd` requests of `bs` in flight, skipping what
 *         base:allocation says is a hole (as nbdcopy does); report the time from connect to close
 */
import { pathToFileURL } from 'node:url'
import { ioLoop } from '../lib/io-loop.ts'
import { copyPlan, type Job, type WorkerResult } from '../lib/job.ts'

const job = JSON.parse(process.argv[2]!) as Job
// A baseline build (bench --baseline) is loaded from its own dist/, with the same loop.
const { NbdClient } = (job.lib === undefined ? await import('nbdts') : await import(pathToFileURL(job.lib).href)) as typeof import('nbdts')
const t0 = performance.now()
// The bench wrote its own URIs (the tls row names its PSK file): they are trusted.
const client = await NbdClient.connect(job.uri, { maxInFlight: Math.max(job.qd, 1), connections: job.connections ?? 1, allowLocalFile: true, ...job.options })
let ops = 0
let seconds: number

if (job.mode === 'copy') {
  const extents: Array<{ offset: number, length: number, data: boolean }> = []
  for await (const e of client.map()) extents.push({ offset: Number(e.offset), length: e.length, data: (e.flags & 2) === 0 })
  const pieces = copyPlan(extents, job.bs)
  const buffers = Array.from({ length: job.qd }, () => Buffer.allocUnsafe(job.bs))
  let next = 0
  await Promise.all(buffers.map(async (buf) => {
    while (next < pieces.length) {
      const [offset, length] = pieces[next++]!
      await client.readInto(length === buf.length ? buf : buf.subarray(0, length), offset)
      ops++
    }
  }))
  await client.close()
  seconds = (performance.now() - t0) / 1000
} else {
  const run = ioLoop(client, job)
  // Warm up (JIT, socket buffers), then measure.
  await run(500)
  const started = performance.now()
  ops = await run(job.seconds * 1000)
  seconds = (performance.now() - started) / 1000
  await client.close()
}
const result: WorkerResult = { ops, seconds, maxRssKiB: process.resourceUsage().maxRSS }
process.stdout.write(JSON.stringify(result) + '\n')
