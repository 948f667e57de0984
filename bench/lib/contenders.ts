/**
 * Everyone measured, each in its own process against the same export: nbdts (our library),
 * QEMU's client (`qemu-img bench`) and libnbd (fio's nbd engine).
 */
import { fileURLToPath } from 'node:url'
import { runProc } from './proc.ts'
import { toValue, type Row, type Sample } from './rows.ts'

export interface Target {
  readonly uri: string
  readonly size: number
}

export interface Contender {
  readonly name: string
  /** Footnote for the table (how this contender approximates the row). */
  readonly note?: string
  supports: (row: Row) => boolean
  run: (row: Row, target: Target, seconds: number) => Promise<Sample>
}

const worker = fileURLToPath(new URL('../workers/nbdts.ts', import.meta.url))

export const nbdtsLibrary: Contender = {
  name: 'nbdts',
  supports: () => true,
  async run (row, target, seconds) {
    const job = { uri: target.uri, rw: row.rw, bs: row.bs, qd: row.qd, seconds }
    const { stdout } = await runProc(process.execPath, ['--import', 'tsx', worker, JSON.stringify(job)], (seconds + 30) * 1000)
    const r = JSON.parse(stdout.trim().split('\n').pop()!) as { ops: number, seconds: number, maxRssKiB: number }
    return { value: toValue(row, r.ops, r.seconds), rssMiB: r.maxRssKiB / 1024 }
  }
}

/** Rough rates used to size qemu-img bench's request count so a run lasts about `seconds`. */
function expectedRate (row: Row): number {
  if (row.bs >= 1 << 20) return 4000
  return row.qd === 1 ? 25_000 : 100_000
}

export const qemuImgBench: Contender = {
  name: 'qemu-img bench',
  note: 'qemu-img bench only does sequential or strided I/O: "random" rows use a stride of 4096 × 104729, which visits every block in a scattered order',
  supports: () => true,
  async run (row, target, seconds) {
    const count = Math.max(200, Math.round(expectedRate(row) * seconds))
    const args = ['bench', '-f', 'raw', '-c', String(count), '-d', String(row.qd), '-s', String(row.bs)]
    if (row.rw.startsWith('rand')) args.push('-S', String(4096 * 104729))
    if (row.rw.endsWith('write')) args.push('-w', '--pattern=0x5a')
    args.push(target.uri)
    const { stdout } = await runProc('qemu-img', args, (seconds * 10 + 60) * 1000)
    const match = /Run completed in ([\d.]+) seconds/.exec(stdout)
    if (match === null) throw new Error(`unexpected qemu-img bench output: ${stdout}`)
    return { value: toValue(row, count, Number(match[1])) }
  }
}

export const fioNbd: Contender = {
  name: 'libnbd (fio nbd)',
  supports: () => true,
  async run (row, target, seconds) {
    const args = ['--name=bench', '--ioengine=nbd', `--uri=${target.uri}`, `--rw=${row.rw}`, `--bs=${row.bs}`,
      `--iodepth=${row.qd}`, `--runtime=${seconds}`, '--time_based', '--ramp_time=0.5', '--output-format=json']
    const { stdout } = await runProc('fio', args, (seconds + 60) * 1000)
    // fio's nbd engine prints "fio: connected to NBD server" before the JSON.
    const json = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: Array<Record<'read' | 'write', { iops: number, bw_bytes: number }>> }
    const side = json.jobs[0]![row.rw.endsWith('write') ? 'write' : 'read']
    return { value: row.unit === 'IOPS' ? side.iops : side.bw_bytes / (1 << 20) }
  }
}
