/**
 * Our fsx (test/helpers/fsx.ts) against a mount: 10,000 seeded random reads, writes, punches,
 * zero-ranges, mmap reads and writes, O_DIRECT reads and writes, SEEK_DATA/SEEK_HOLE, fsyncs
 * and O_TRUNC opens, each checked against a model. The seed is printed (FSX_SEED=S replays
 * it); `npm run fsx -- --ops N --seed S` runs longer.
 */
import assert from 'node:assert/strict'
import { after, test } from 'node:test'
import '../helpers/assert.ts'
import { runFsx } from '../helpers/fsx.ts'
import { mountExport } from '../helpers/mounts.ts'
import { startNbdkit, tempDir } from '../helpers/servers.ts'

const dir = tempDir()
const stops: Array<() => Promise<void>> = []
after(async () => { for (const s of stops.reverse()) await s().catch(() => {}) })

test('fsx: 10,000 random operations on a mount agree with the model', async (t) => {
  const size = 4 * 1024 * 1024
  const s = await startNbdkit(dir, ['memory', String(size)], 'fsx')
  stops.push(() => s.stop('SIGKILL'))
  const m = await mountExport(dir, s.uri(), 'fsx.img')
  stops.push(() => m.unmount())
  const seed = process.env.FSX_SEED !== undefined ? Number(process.env.FSX_SEED) : Math.floor(Math.random() * 2 ** 31)
  t.diagnostic(`fsx seed ${seed} (FSX_SEED=${seed} replays it)`)
  const result = runFsx({ file: m.file, size, ops: 10_000, seed })
  t.diagnostic(`operations: ${JSON.stringify(result.counts)}`)
  for (const op of ['read', 'write', 'mapread', 'mapwrite', 'dread', 'dwrite', 'punch', 'zero', 'seek']) {
    assert.ok((result.counts[op] ?? 0) > 100, `${op} ran`)
  }
  assert.equal(m.logText().match(/ error: /g), null, 'the daemon logged no error')
})
