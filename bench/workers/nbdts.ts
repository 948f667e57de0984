/**
 * The nbdts side of a library row, in its own process like every other contender: connect,
 * warm up, then run `qd` concurrent request loops for `seconds` and report what was done.
 * Imports the built package (dist/), as a user would.
 */
import { NbdClient } from '../../dist/index.js'

interface Job { uri: string, rw: 'randread' | 'randwrite' | 'read' | 'write', bs: number, qd: number, seconds: number, connections?: number }
const job = JSON.parse(process.argv[2]!) as Job

const client = await NbdClient.connect(job.uri, { maxInFlight: Math.max(job.qd, 1), connections: job.connections ?? 1 })
const blocks = Number(client.size) / job.bs
let next = 0
const offset = job.rw.startsWith('rand')
  ? () => Math.floor(Math.random() * blocks) * job.bs
  : () => { const o = next * job.bs; next = (next + 1) % blocks; return o }
const writing = job.rw === 'randwrite' || job.rw === 'write'

let ops = 0
let stopAt = 0
async function loop (): Promise<void> {
  const buf = Buffer.alloc(job.bs, 0x5a)
  while (performance.now() < stopAt) {
    if (writing) await client.write(buf, offset())
    else await client.readInto(buf, offset())
    ops++
  }
}

// Warm up (JIT, socket buffers), then measure.
stopAt = performance.now() + 500
await Promise.all(Array.from({ length: job.qd }, loop))
ops = 0
const started = performance.now()
stopAt = started + job.seconds * 1000
await Promise.all(Array.from({ length: job.qd }, loop))
const seconds = (performance.now() - started) / 1000
await client.close()
process.stdout.write(JSON.stringify({ ops, seconds, maxRssKiB: process.resourceUsage().maxRSS }) + '\n')
