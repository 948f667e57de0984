/**
 * `npm run demo` (less its set-up step) does its whole job and leaves nothing behind:
 * no mount, no loop device, no demo directory.
 */
import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { fileURLToPath } from 'node:url'
import { test } from 'node:test'
import '../helpers/assert.ts'
import { run } from '../helpers/servers.ts'

const demo = fileURLToPath(new URL('../../scripts/demo.ts', import.meta.url))
const demoDirs = (): string[] => readdirSync(tmpdir()).filter((n) => n.startsWith('nbdts-demo-'))

test('npm run demo mounts, uses ext4 on the mount, reads back intact and tears down', async () => {
  const before = new Set(demoDirs())
  const r = await run(process.execPath, ['--import', 'tsx', demo], { timeoutMs: 180_000 })
  const out = r.stdout.toString()
  assert.match(out, /random\.bin: 48 MiB, sha256 \S+ matches what was written/)
  assert.match(out, /hello\.txt: hello from nbdts/)
  assert.match(out, /e2fsck -fn/)
  assert.match(out, /connections: CONNECTED/)
  assert.match(out, /unmounted/)
  const dirs = demoDirs().filter((d) => !before.has(d))
  assert.deepEqual(dirs, [], 'the demo directory is removed')
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
  assert.doesNotMatch(mounts, /nbdts-demo-/)
  const loops = (await run('losetup', ['-a'])).stdout.toString()
  assert.doesNotMatch(loops, /nbdts-demo-/)
})
