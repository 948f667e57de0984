/**
 * `node --import tsx bench/multipath.ts [--runs 5]`
 *
 * The I/O stall of a path failure, as the issue states it: two nbdkit `file` servers over one
 * image, `nbdts mount URI1 FILE --path URI2`, fio randwrite (4 KiB, QD 16, libaio, direct,
 * crc32c verification) for 10 s; after 3 s the server of the path carrying I/O is killed with
 * -9, after 6 s restarted. Reported per policy (failover, round-robin): fio's error, its
 * longest write (clat max) over the runs (median and worst), and the IOPS. Writes JSON to
 * bench/results/multipath.json.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'
import { runProc } from './lib/proc.ts'

const { values: args } = parseArgs({ options: { runs: { type: 'string', default: '5' } } })
const runs = Number(args.runs)
const CLI = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url))
const dir = mkdtempSync(path.join(tmpdir(), 'nbdts-multipath-'))
const image = path.join(dir, 'disk.img')
writeFileSync(image, Buffer.alloc(64 << 20))

interface Server { child: ChildProcess | null, socket: string, pidfile: string }
const servers: Server[] = ['a', 'b'].map((n) => ({ child: null, socket: path.join(dir, `${n}.sock`), pidfile: path.join(dir, `${n}.pid`) }))
const uri = (s: Server): string => `nbd+unix:///?socket=${s.socket}`

async function start (s: Server): Promise<void> {
  rmSync(s.socket, { force: true })
  rmSync(s.pidfile, { force: true })
  s.child = spawn('nbdkit', ['--exit-with-parent', '-f', '-U', s.socket, '-P', s.pidfile, 'file', image], { stdio: 'ignore' })
  while (!existsSync(s.pidfile) || readFileSync(s.pidfile, 'utf8').trim() === '') await sleep(2)
}

async function kill (s: Server): Promise<void> {
  const child = s.child!
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGKILL')
  await exited
}

const results: Record<string, { runs: number, errors: number, clatMaxMs: { median: number, max: number }, iops: number }> = {}
for (const selector of ['failover', 'round-robin']) {
  const stalls: number[] = []
  const iops: number[] = []
  let errors = 0
  for (let run = 0; run < runs; run++) {
    for (const s of servers) await start(s)
    const file = path.join(dir, `${selector}-${run}.disk`)
    writeFileSync(file, '')
    const pidfile = `${file}.pid`
    await runProc(process.execPath, [CLI, 'mount', uri(servers[0]!), file, '--path', uri(servers[1]!), '--path-selector', selector,
      '--polling-interval', '200ms', '--reconnect-delay', '20s', '--pidfile', pidfile, '--control-socket', `${file}.ctl`], 60_000)
    const fio = runProc('fio', ['--name=paths', `--filename=${file}`, '--rw=randwrite', '--bs=4k', '--iodepth=16', '--ioengine=libaio', '--direct=1',
      '--size=64M', '--verify=crc32c', '--verify_fatal=1', '--verify_backlog=64', '--time_based', '--runtime=10', '--output-format=json'], 120_000)
    await sleep(3000)
    const victim = selector === 'failover' ? servers[0]! : servers[1]!
    await kill(victim)
    await sleep(3000)
    await start(victim)
    const { stdout } = await fio
    const job = (JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: Array<{ error: number, write: { iops: number, clat_ns: { max: number } } }> }).jobs[0]!
    if (job.error !== 0) errors++
    stalls.push(job.write.clat_ns.max / 1e6)
    iops.push(job.write.iops)
    await runProc(process.execPath, [CLI, 'umount', file], 60_000)
    for (const s of servers) await kill(s)
    process.stderr.write(`${selector} run ${run + 1}: fio error ${job.error}, longest write ${(job.write.clat_ns.max / 1e6).toFixed(1)} ms, ${job.write.iops.toFixed(0)} IOPS\n`)
  }
  const sorted = [...stalls].sort((x, y) => x - y)
  results[selector] = {
    runs,
    errors,
    clatMaxMs: { median: Math.round(sorted[Math.floor(sorted.length / 2)]!), max: Math.round(sorted.at(-1)!) },
    iops: Math.round([...iops].sort((x, y) => x - y)[Math.floor(iops.length / 2)]!)
  }
}
console.log(JSON.stringify(results, null, 2))
const out = fileURLToPath(new URL('./results/', import.meta.url))
mkdirSync(out, { recursive: true })
writeFileSync(path.join(out, 'multipath.json'), `${JSON.stringify(results, null, 2)}\n`)
rmSync(dir, { recursive: true, force: true })
