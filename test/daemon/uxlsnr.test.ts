/**
 * The uxlsnr principles, measured on a real daemon: a mount whose server hangs (SIGSTOP)
 * delays neither the control socket nor the other mounts; 50 mounts in one daemon, each one's
 * I/O verified, `show mounts` still quick, and the memory each idle mount costs. The figures
 * are printed as test diagnostics (# ...); the only bounds asserted are hang detectors.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import { after, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { ControlConnection } from '../../src/control/index.ts'
import { within } from '../helpers/assert.ts'
import { startDaemon } from '../helpers/daemon.ts'
import { isMounted } from '../helpers/mounts.ts'
import { run, startNbdkit, stopServer, tempDir } from '../helpers/servers.ts'

const dir = tempDir()
const cleanups: Array<() => Promise<void> | void> = []
after(async () => { for (const c of cleanups.reverse()) await c() })

function section (uri: string, file: string): string {
  return `[[mount]]\nuri = "${uri}"\nfile = "${file}"\n\n`
}

function rssKiB (pid: number): number {
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1])
}

/** `show mounts` `n` times over one connection; each answer's time, ms. */
async function timeShowMounts (socket: string, n: number): Promise<number[]> {
  const c = await ControlConnection.connect(socket)
  try {
    const times: number[] = []
    for (let i = 0; i < n; i++) {
      const t = performance.now()
      const reply = await c.request('show mounts')
      times.push(performance.now() - t)
      assert.equal(reply.ok, true, reply.text)
    }
    return times
  } finally {
    c.close()
  }
}

function p99 (times: readonly number[]): number {
  const sorted = [...times].sort((a, b) => a - b)
  return sorted[Math.ceil(0.99 * sorted.length) - 1]!
}

test('a stopped server delays neither show mounts nor the other mounts\' I/O (fio runs on them meanwhile)', async (t) => {
  const servers = await Promise.all(['u-stopped', 'u-2', 'u-3'].map((name) => startNbdkit(dir, ['memory', '64M'], name)))
  for (const s of servers) cleanups.push(() => s.stop('SIGKILL'))
  const files = ['u-stopped.img', 'u-2.img', 'u-3.img'].map((name) => {
    const file = path.join(dir, name)
    writeFileSync(file, '')
    return file
  })
  const d = await startDaemon(dir, 'u', { config: '[defaults]\nconnections = 1\nreconnect-delay = "60s"\n\n' + servers.map((s, i) => section(s.uri(), files[i]!)).join('') })
  cleanups.push(() => d.stop())
  assert.match(d.ready, /3 mounts: 3 up/)
  const [stopped, ...others] = files as [string, string, string]

  const fio = others.map((file) => {
    const job = run('fio', ['--name=load', `--filename=${file}`, '--rw=randrw', '--bs=4k', '--direct=1', '--ioengine=libaio', '--iodepth=8',
      '--size=16M', '--runtime=4', '--time_based', '--output-format=json', '--verify_state_save=0'], { timeoutMs: 60_000 })
    job.catch(() => {})
    return job
  })
  await sleep(500)
  await stopServer(servers[0]!.pid)
  cleanups.push(() => { try { process.kill(servers[0]!.pid, 'SIGCONT') } catch { /* gone */ } })
  // I/O on the stopped server's mount: it waits, in flight.
  const stuck = spawn('dd', [`if=${stopped}`, 'of=/dev/null', 'bs=4096', 'count=1', 'iflag=direct', 'status=none'], { stdio: 'ignore' })
  cleanups.push(() => { stuck.kill('SIGKILL') })
  const stuckDone = new Promise<number | null>((resolve) => stuck.once('exit', resolve))
  for (let i = 0; i < 200 && (await d.mounts()).find((m) => m.file === stopped)!.inFlight === 0; i++) await sleep(10)
  assert.ok((await d.mounts()).find((m) => m.file === stopped)!.inFlight > 0, 'a request waits on the stopped server')

  const times = await within(timeShowMounts(d.socket, 20), 20 * 2000, '20 × show mounts')
  for (const ms of times) assert.ok(ms < 2000, `show mounts answered in ${ms.toFixed(1)} ms (a hang detector, not a speed test)`)
  const requests = await d.ctl('show', 'mount', stopped, 'requests', 'json')
  assert.equal(requests.ok, true, 'a handler reading the hung mount answers')
  assert.ok((JSON.parse(requests.text) as { nbd: unknown[] }).nbd.length >= 1)
  const results = await Promise.all(fio)
  for (const r of results) {
    const job = (JSON.parse(r.stdout.toString()) as { jobs: Array<{ error: number, read: { io_bytes: number, iops: number }, write: { io_bytes: number } }> }).jobs[0]!
    assert.equal(job.error, 0)
    assert.ok(job.read.io_bytes > 0 && job.write.io_bytes > 0, 'the other mounts\' I/O went on')
    t.diagnostic(`fio on another mount while the server was stopped: ${Math.round(job.read.iops)} read IOPS`)
  }
  t.diagnostic(`show mounts with a stopped server, 20 calls: p99 ${p99(times).toFixed(2)} ms, median ${[...times].sort((a, b) => a - b)[10]!.toFixed(2)} ms`)

  process.kill(servers[0]!.pid, 'SIGCONT')
  assert.equal(await within(stuckDone, 30_000, 'the stopped server\'s request, after SIGCONT'), 0)
  await d.stop()
  assert.equal(files.some((f) => isMounted(f)), false)
})

test('50 mounts in one daemon: each one\'s I/O verified, show mounts quick, memory per idle mount measured', async (t) => {
  const server = await startNbdkit(dir, ['memory', '64M'], 'scale')
  cleanups.push(() => server.stop('SIGKILL'))
  const n = 50
  const files = Array.from({ length: n }, (_v, i) => {
    const file = path.join(dir, `s${String(i).padStart(2, '0')}.img`)
    writeFileSync(file, '')
    return file
  })
  const d = await startDaemon(dir, 's', { config: '[defaults]\nconnections = 1\n' })
  cleanups.push(() => d.stop())
  await sleep(1000)
  const idle = rssKiB(d.pid)
  const started = performance.now()
  writeFileSync(path.join(dir, 's.toml'), '[defaults]\nconnections = 1\n\n' + files.map((f) => section(server.uri(), f)).join(''))
  assert.equal((await d.ctl('reconfigure')).text, 'ok')
  for (const f of files) await d.waitFor(f, 'up', 120_000)
  const upMs = performance.now() - started
  await sleep(1500)
  const full = rssKiB(d.pid)
  t.diagnostic(`50 mounts up in ${Math.round(upMs)} ms; RSS ${Math.round(idle / 1024)} MiB with none, ${Math.round(full / 1024)} MiB with 50: ${Math.round((full - idle) / n)} KiB per idle mount`)

  // Mount i writes its own 4 KiB at block i; mount i+1 reads it back: every mount's write and read path.
  const queue = [...files.keys()]
  const worker = async (): Promise<void> => {
    for (let i = queue.shift(); i !== undefined; i = queue.shift()) {
      const block = Buffer.alloc(4096, `mount ${i};`)
      const source = path.join(dir, `s${i}.bin`)
      writeFileSync(source, block)
      await run('dd', [`if=${source}`, `of=${files[i]}`, 'bs=4096', `seek=${i}`, 'conv=notrunc,fsync', 'oflag=direct', 'status=none'])
      const back = (await run('dd', [`if=${files[(i + 1) % n]}`, 'bs=4096', `skip=${i}`, 'count=1', 'iflag=direct', 'status=none'])).stdout
      assert.ok(back.equals(block), `block ${i}: written through mount ${i}, read through mount ${(i + 1) % n}`)
    }
  }
  await Promise.all(Array.from({ length: 6 }, () => worker()))

  const rows = await d.mounts()
  assert.equal(rows.length, n)
  assert.ok(rows.every((r) => r.state === 'up'))
  const times = await timeShowMounts(d.socket, 20)
  for (const ms of times) assert.ok(ms < 2000, `show mounts answered in ${ms.toFixed(1)} ms`)
  t.diagnostic(`show mounts with 50 mounts, 20 calls: p99 ${p99(times).toFixed(2)} ms`)
  await d.stop()
  assert.equal(files.filter((f) => isMounted(f)).length, 0, 'every mount unmounted at shutdown')
})
