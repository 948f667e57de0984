/**
 * What one request costs the engine, counted rather than timed: promises created (async_hooks)
 * and young-generation collections (scavenges) per 100,000 requests, for 4 KiB random reads
 * and writes at QD 16 against nbdkit `memory` on a Unix socket; with `--sites`, the bytes
 * allocated per request and where (V8's sampling heap profiler, collected objects included;
 * the loop's own ~200 bytes are in it).
 *
 *   node --import tsx bench/per-request.ts [--lib OTHER/dist/index.js] [--requests 100000] [--sites]
 *
 * `--lib` loads another build (a baseline worktree's dist/) with the same loop.
 */
import { createHook } from 'node:async_hooks'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PerformanceObserver } from 'node:perf_hooks'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'

const { values } = parseArgs({ options: { lib: { type: 'string' }, requests: { type: 'string', default: '100000' }, sites: { type: 'boolean', default: false }, 'no-hooks': { type: 'boolean', default: false } } })
const total = Number(values.requests)
const { NbdClient } = (values.lib === undefined
  ? await import('../src/index.ts')
  : await import(pathToFileURL(values.lib).href)) as typeof import('../src/index.ts')

const dir = mkdtempSync(join(tmpdir(), 'nbdts-per-request-'))
const sock = join(dir, 'sock')
const server = spawn('nbdkit', ['--exit-with-parent', '-f', '-U', sock, 'memory', '256M'], { stdio: 'ignore' })
server.on('error', () => {})
for (let i = 0; i < 200 && !existsSync(sock); i++) await new Promise((resolve) => setTimeout(resolve, 10))

let promises = 0
const hook = createHook({ init (_id, type) { if (type === 'PROMISE') promises++ } })
let scavenges = 0
const gc = new PerformanceObserver((list) => {
  for (const e of list.getEntries()) if (((e as { detail?: unknown }).detail as { kind?: number } | undefined)?.kind === 1) scavenges++
})

const client = await NbdClient.connect(`nbd+unix:///?socket=${sock}`, { maxInFlight: 16 })
const blocks = Math.floor(client.size / 4096)
const qd = 16

async function run (kind: 'read' | 'write', n: number): Promise<void> {
  let left = n
  await Promise.all(Array.from({ length: qd }, async () => {
    const buf = Buffer.alloc(4096, 1)
    while (left-- > 0) {
      const offset = Math.floor(Math.random() * blocks) * 4096
      // Argument order differs between builds: both take (buffer, offset) for these two.
      if (kind === 'read') await client.readInto(buf, offset)
      else await client.write(buf, offset)
    }
  }))
}

for (const kind of ['read', 'write'] as const) {
  await run(kind, 20_000)
  // Promises with async_hooks on (which allocate for themselves); collections with them off.
  promises = 0
  if (!values['no-hooks']) {
    hook.enable()
    await run(kind, total)
    hook.disable()
  }
  scavenges = 0
  gc.observe({ entryTypes: ['gc'] })
  const t0 = performance.now()
  await run(kind, total)
  const ms = performance.now() - t0
  await new Promise((resolve) => setImmediate(resolve))
  gc.disconnect()
  if (values.sites) await sites(kind)
  console.log(`4 KiB rand${kind} QD ${qd}: ${(promises / total).toFixed(2)} promises/request, ${(scavenges * 100_000 / total).toFixed(1)} scavenges/100k requests, ${Math.round(total / ms * 1000)} IOPS (one run: not a speed figure)`)
}
/** Where the bytes come from: V8's sampling heap profiler, collected objects included. */
async function sites (kind: 'read' | 'write'): Promise<void> {
  const { Session } = await import('node:inspector/promises')
  const session = new Session()
  session.connect()
  await session.post('HeapProfiler.startSampling', { samplingInterval: 256, includeObjectsCollectedByMinorGC: true, includeObjectsCollectedByMajorGC: true } as object)
  await run(kind, total)
  const { profile } = await session.post('HeapProfiler.stopSampling')
  session.disconnect()
  const bySite = new Map<string, number>()
  const walk = (node: typeof profile.head): void => {
    const self = node.selfSize
    if (self > 0) {
      const f = node.callFrame
      const key = `${f.functionName || '(anonymous)'} ${f.url.replace(/^.*\/(src|bench|node_modules)\//, '$1/')}:${f.lineNumber + 1}`
      bySite.set(key, (bySite.get(key) ?? 0) + self)
    }
    for (const child of node.children) walk(child)
  }
  walk(profile.head)
  const sum = [...bySite.values()].reduce((a, b) => a + b, 0)
  console.log(`  sampled ~${Math.round(sum / total)} bytes/request; top sites:`)
  for (const [key, bytes] of [...bySite].sort((a, b) => b[1] - a[1]).slice(0, 18)) console.log(`  ${String(Math.round(bytes / total)).padStart(6)}  ${key}`)
}

await client.close()
server.kill()
rmSync(dir, { recursive: true, force: true })
