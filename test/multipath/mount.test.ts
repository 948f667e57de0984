/**
 * Multipath through a mount (issue 17): two nbdkit `file` servers over one image, a mount in
 * the daemon with both paths, fio randwrite with crc32c verification; the active path's server
 * killed with -9 mid-run, then restarted. fio must finish with no error and every
 * verification passing; `show paths` must show the failure and, after the restart, the
 * failback. Once with failover, once with round-robin. The stall itself (fio's clat max) is
 * measured in bench/multipath.ts; here a bound of 5 s only catches a hang.
 */
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { startDaemon } from '../helpers/daemon.ts'
import { run, testScene } from '../helpers/servers.ts'

const { dir, nbdkit, defer } = testScene()
const MiB = 1 << 20

interface FioJob { error: number, write: { io_bytes: number, clat_ns: { max: number } }, read: { io_bytes: number } }

for (const selector of ['failover', 'round-robin'] as const) {
  describe(`a mount over two paths (${selector})`, () => {
    test('kill -9 of a path\'s server under fio verify: no error, every block verified; show paths tells; the path comes back', async () => {
      const image = path.join(dir, `${selector}.img`)
      writeFileSync(image, Buffer.alloc(32 * MiB))
      const a = await nbdkit(`${selector}-a`, ['file', image])
      const b = await nbdkit(`${selector}-b`, ['file', image])
      const daemon = await startDaemon(dir, selector)
      defer(() => daemon.stop())
      const file = path.join(dir, `${selector}.disk`)
      writeFileSync(file, '')
      const added = await daemon.ctl('add', 'mount', a.uri(), file, 'paths', b.uri(), 'path-selector', selector, 'polling-interval', '200ms', 'reconnect-delay', '20s')
      assert.ok(added.ok, added.text)
      await daemon.waitFor(file, 'up')
      const fio = run('fio', ['--name=paths', `--filename=${file}`, '--rw=randwrite', '--bs=4k', '--iodepth=16', '--ioengine=libaio', '--direct=1',
        '--size=32M', '--verify=crc32c', '--verify_fatal=1', '--verify_backlog=64', '--time_based', '--runtime=8', '--output-format=json'], { timeoutMs: 60_000 })
      fio.catch(() => {})
      await sleep(2000)
      // Failover kills the active path; round-robin kills path 2 (both carry I/O there).
      const victim = selector === 'failover' ? a : b
      await victim.stop('SIGKILL')
      await sleep(1500)
      const during = await daemon.ctl('show', 'paths', 'json')
      assert.ok(during.ok, during.text)
      const rows = JSON.parse(during.text) as Array<{ path: number, state: string, role: string, lastFailure?: string }>
      const killed = rows.find((r) => r.path === (victim === a ? 1 : 2))!
      assert.equal(killed.state, 'failed', during.text)
      assert.ok(killed.lastFailure !== undefined, 'the failure is recorded')
      const text = await daemon.ctl('show', 'paths')
      assert.match(text.text, /PATH\s+URI\s+STATE\s+ROLE/)
      await victim.restart()
      const { stdout } = await fio
      const job = (JSON.parse(stdout.toString()) as { jobs: FioJob[] }).jobs[0]!
      assert.equal(job.error, 0, 'fio finished with no error, every verification passed')
      assert.ok(job.write.io_bytes > 0 && job.read.io_bytes > 0)
      assert.ok(job.write.clat_ns.max < 5e9, `no write hung (the longest took ${(job.write.clat_ns.max / 1e6).toFixed(0)} ms)`)
      // The checker finds the path again; failback (immediate) puts I/O back on it.
      const deadline = Date.now() + 10_000
      let after: Array<{ path: number, state: string, role: string, connections: number }> = []
      for (;;) {
        after = JSON.parse((await daemon.ctl('show', 'paths', 'json')).text) as typeof after
        const back = after.find((r) => r.path === (victim === a ? 1 : 2))!
        if (back.state === 'ready' && (selector === 'failover' ? back.role === 'active' : back.connections > 0)) break
        if (Date.now() > deadline) assert.fail(`the path did not come back: ${JSON.stringify(after)}`)
        await sleep(100)
      }
      const metrics = await daemon.ctl('show', 'metrics')
      assert.match(metrics.text, /nbdts_path_state\{mount="[^"]+",path="1",state="ready"\} 1/)
      const del = await daemon.ctl('del', 'mount', file)
      assert.ok(del.ok, del.text)
      await daemon.waitFor(file, 'gone')
      // What fio wrote is on the image, as an independent reader sees it.
      await run('nbdcopy', [a.uri(), 'null:'])
    })
  })
}
