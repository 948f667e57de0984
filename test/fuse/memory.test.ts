/**
 * Memory comes back after a burst: 1 MiB O_DIRECT writes at queue depth 128 touch every
 * request slot (~130 MiB at max_write 1 MiB) and touch the READ slab; once the mount has been
 * idle for a few seconds (5 to 15) the daemon gives the slot and slab pages and the C heap back.
 */
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { after, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import '../helpers/assert.ts'
import { daemonNodeFlags } from '../../src/cli/detach.ts'
import { mountExport } from '../helpers/mounts.ts'
import { run, startNbdkit, tempDir } from '../helpers/servers.ts'

const dir = tempDir()
const stops: Array<() => Promise<void>> = []
after(async () => { for (const s of stops.reverse()) await s().catch(() => {}) })

/** Anonymous resident memory of a process, MiB (what a burst grows). */
function rssAnon (pid: number): number {
  return Number(/^RssAnon:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024
}

test('after a burst of 1 MiB direct writes and reads, the daemon gives the burst\'s memory back within seconds', async () => {
  const s = await startNbdkit(dir, ['memory', '1G'], 'burst')
  stops.push(() => s.stop('SIGKILL'))
  const m = await mountExport(dir, s.uri(), 'burst.img')
  stops.push(() => m.unmount())
  await sleep(1000)
  const idle = rssAnon(m.pid)
  await run('fio', ['--name=burst', `--filename=${m.file}`, '--rw=randrw', '--bs=1m', '--ioengine=libaio', '--direct=1', '--iodepth=64',
    '--numjobs=2', '--size=1G', '--runtime=4', '--time_based', '--output-format=terse'], { timeoutMs: 60_000 })
  const burst = rssAnon(m.pid)
  assert.ok(burst > idle + 64, `the burst grew the daemon (${idle.toFixed(0)} → ${burst.toFixed(0)} MiB)`)
  let now = burst
  for (let i = 0; i < 60 && now > idle + 64; i++) {
    await sleep(500)
    now = rssAnon(m.pid)
  }
  assert.ok(now <= idle + 64, `memory back after the burst: idle ${idle.toFixed(0)}, burst ${burst.toFixed(0)}, 30 s later ${now.toFixed(0)} MiB`)
  assert.match(m.logText(), /idle after a burst: gave memory back/)
})

test('the mount daemon runs with 4 MiB semi-spaces, unless its starter was given another size', async () => {
  const s = await startNbdkit(dir, ['memory', '64M'], 'flags')
  stops.push(() => s.stop('SIGKILL'))
  const m = await mountExport(dir, s.uri(), 'flags.img')
  stops.push(() => m.unmount())
  const args = readFileSync(`/proc/${m.pid}/cmdline`, 'utf8').split('\0')
  assert.ok(args.includes('--max-semi-space-size=4'), `daemon command line: ${args.join(' ')}`)
  assert.deepEqual(daemonNodeFlags(['--max_semi_space_size=8'], ''), ['--max_semi_space_size=8'])
  assert.deepEqual(daemonNodeFlags([], '--max-semi-space-size=2'), [])
  assert.deepEqual(daemonNodeFlags(['--inspect'], ''), ['--inspect', '--max-semi-space-size=4'])
})
