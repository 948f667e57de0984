/**
 * `node --import tsx bench/reconnect.ts [--restarts 50] [--transport unix|tcp] [--outage 20]`
 *
 * How fast the client finds a returning server, and whether anything fails or is lost on the
 * way: 64 writers (write random bytes, read them back, compare) while nbdkit is killed with -9
 * and restarted again and again (up 0.3–1.5 s, down 0.2–2 s), reconnectDelay 20 s; then one
 * outage of `--outage` seconds. Reported: failed requests, mismatches, the longest time from a
 * server's return (its pidfile written) to the next completed request, the longest single
 * request, and whether the file holds every acknowledged write at the end (bytes of a write that
 * failed to its caller may hold either content: the server may have run it). Writes JSON to
 * bench/results/reconnect-<transport>.json.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes, randomInt } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'
import { NbdClient } from 'nbdts'

const { values: args } = parseArgs({
  options: { restarts: { type: 'string', default: '50' }, transport: { type: 'string', default: 'unix' }, outage: { type: 'string', default: '20' } }
})
const restarts = Number(args.restarts)
const tcp = args.transport === 'tcp'
const outageSeconds = Number(args.outage)
const dir = mkdtempSync(path.join(tmpdir(), 'nbdts-reconnect-'))
const image = path.join(dir, 'disk.img')
const socket = path.join(dir, 'nbdkit.sock')
const pidfile = path.join(dir, 'nbdkit.pid')
const port = 10990
const SIZE = 64 << 20
writeFileSync(image, Buffer.alloc(SIZE))

let server: ChildProcess | null = null
async function start (): Promise<number> {
  rmSync(socket, { force: true })
  rmSync(pidfile, { force: true })
  const listen = tcp ? ['-i', '127.0.0.1', '-p', String(port)] : ['-U', socket]
  server = spawn('nbdkit', ['--exit-with-parent', '-f', ...listen, '-P', pidfile, 'file', image], { stdio: 'ignore' })
  while (!existsSync(pidfile) || readFileSync(pidfile, 'utf8').trim() === '') await sleep(2)
  return performance.now()
}
async function kill (): Promise<void> {
  const s = server!
  const exited = new Promise((resolve) => s.once('exit', resolve))
  s.kill('SIGKILL')
  await exited
}

await start()
const uri = tcp ? `nbd://127.0.0.1:${port}/` : `nbd+unix:///?socket=${socket}`
const client = await NbdClient.connect(uri, { maxInFlight: 64, reconnectDelay: 20_000 })
const model = Buffer.alloc(SIZE)
// Bytes of a write whose caller heard it failed: it may or may not have run on the server (one
// killed after running it and before answering), until a later write of them succeeds.
const unknown = new Uint8Array(SIZE)
let stop = false
let ops = 0
let failed = 0
let mismatches = 0
let longestOp = 0
let lastSuccess = performance.now()
const successes: number[] = []
const errors = new Map<string, number>()
const workers = 64
const region = SIZE / workers
const load = Promise.all(Array.from({ length: workers }, async (_, w) => {
  while (!stop) {
    const offset = w * region + randomInt(region - 40_000)
    const data = randomBytes(1 + randomInt(32_768))
    const began = performance.now()
    try {
      try {
        await client.write(data, offset)
      } catch (err) {
        unknown.fill(1, offset, offset + data.length)
        throw err
      }
      data.copy(model, offset)
      unknown.fill(0, offset, offset + data.length)
      const back = await client.read(data.length, offset)
      if (!back.equals(data)) mismatches++
      ops++
      lastSuccess = performance.now()
      successes.push(lastSuccess)
      longestOp = Math.max(longestOp, lastSuccess - began)
    } catch (err) {
      failed++
      const code = (err as { code?: string }).code ?? String(err)
      errors.set(code, (errors.get(code) ?? 0) + 1)
      // Past the reconnect delay requests fail at once: a loop of settled promises alone would
      // starve the timers (the restart itself among them).
      await sleep(1)
    }
  }
}))

/** From `back` (the server ready again) to the first request completed after it, ms. */
async function firstSuccessAfter (back: number, timeoutMs = 30_000): Promise<number> {
  const deadline = back + timeoutMs
  for (;;) {
    const hit = successes.find((t) => t >= back)
    if (hit !== undefined) return hit - back
    if (performance.now() > deadline) return Infinity
    await sleep(5)
  }
}

const recoveries: number[] = []
const progress = (text: string): void => { process.stderr.write(`${text}\n`) }
progress(`${restarts} restarts over ${tcp ? 'TCP' : 'a Unix socket'} under 64 writers`)
for (let i = 0; i < restarts; i++) {
  await sleep(300 + randomInt(1200))
  await kill()
  await sleep(200 + randomInt(1800))
  successes.length = 0
  const back = await start()
  recoveries.push(await firstSuccessAfter(back))
}
const failedWhileFlapping = failed
progress(`an outage of ${outageSeconds} s`)
await sleep(1000)
await kill()
await sleep(outageSeconds * 1000)
successes.length = 0
const outageBack = await start()
const afterOutage = await firstSuccessAfter(outageBack)
await sleep(1000)
stop = true
await load
await client.flush()
await client.close()
await kill()
const onDisk = readFileSync(image)
let intact = true
for (let i = 0; i < SIZE && intact; i++) if (unknown[i] === 0 && onDisk[i] !== model[i]) intact = false

const sorted = [...recoveries].sort((a, b) => a - b)
const pct = (p: number): number => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!
const result = {
  transport: tcp ? 'tcp' : 'unix',
  restarts,
  operations: ops,
  failedWhileFlapping,
  // The outage lasts as long as the reconnect delay: requests waiting through it fail, by design.
  failedInOutage: failed - failedWhileFlapping,
  errors: Object.fromEntries(errors),
  mismatches,
  intact,
  firstSuccessAfterReturnMs: { median: Math.round(pct(0.5)), p90: Math.round(pct(0.9)), max: Math.round(sorted.at(-1)!) },
  outageSeconds,
  firstSuccessAfterOutageMs: Math.round(afterOutage),
  longestRequestMs: Math.round(longestOp),
  reconnects: client.stats().reconnects
}
console.log(JSON.stringify(result, null, 2))
const out = fileURLToPath(new URL('./results/', import.meta.url))
mkdirSync(out, { recursive: true })
writeFileSync(path.join(out, `reconnect-${result.transport}.json`), `${JSON.stringify(result, null, 2)}\n`)
rmSync(dir, { recursive: true, force: true })
