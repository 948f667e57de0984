/**
 * @vates/nbd-client (xen-orchestra), the other JavaScript NBD client, on the same jobs as
 * workers/nbdts.ts. It only reads (readBlock(index, size): `size` bytes at index × size), has no
 * URIs (a Unix socket path goes in `port`, peers.md §3) and no block status over Unix sockets, so
 * its copy reads every block. With `connections` > 1 it is its MultiNbdClient.
 */
import NbdClient from '@vates/nbd-client'
import MultiNbdClient from '@vates/nbd-client/multi.mjs'
import type { Job, WorkerResult } from '../lib/job.ts'

const job = JSON.parse(process.argv[2]!) as Job
const settings = job.socket !== undefined ? { port: job.socket, exportname: '' } : { address: '127.0.0.1', port: job.port!, exportname: '' }
const t0 = performance.now()
const client = (job.connections ?? 1) > 1
  ? new MultiNbdClient(settings, { nbdConcurrency: job.connections!, readAhead: job.qd })
  : new NbdClient(settings)
await client.connect()
const blocks = Number(client.exportSize) / job.bs
let ops = 0
let seconds: number

if (job.mode === 'copy') {
  let next = 0
  await Promise.all(Array.from({ length: job.qd }, async () => {
    while (next < blocks) {
      await client.readBlock(next++, job.bs)
      ops++
    }
  }))
  await client.disconnect()
  seconds = (performance.now() - t0) / 1000
} else {
  let next = 0
  const index = job.rw.startsWith('rand') ? () => Math.floor(Math.random() * blocks) : () => { const i = next; next = (next + 1) % blocks; return i }
  let stopAt = 0
  const loop = async (): Promise<void> => {
    while (performance.now() < stopAt) {
      await client.readBlock(index(), job.bs)
      ops++
    }
  }
  stopAt = performance.now() + 500
  await Promise.all(Array.from({ length: job.qd }, loop))
  ops = 0
  const started = performance.now()
  stopAt = started + job.seconds * 1000
  await Promise.all(Array.from({ length: job.qd }, loop))
  seconds = (performance.now() - started) / 1000
  await client.disconnect()
}
const result: WorkerResult = { ops, seconds, maxRssKiB: process.resourceUsage().maxRSS }
process.stdout.write(JSON.stringify(result) + '\n')
