/**
 * FUSE contenders: the same export mounted by nbdts and by nbdfuse (libnbd), each measured
 * with fio on the mounted file (libaio, direct=1), `dd iflag=direct` for the copy row, and dd
 * and cp through the page cache for the buffered rows.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import type { Contender, RunContext } from './contenders.ts'
import { runProc } from './proc.ts'
import { bandwidth, type Row, type Sample } from './rows.ts'

const CLI = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url))

/** A local file of random data, the export's size, to write from (made once per run, cached). */
async function localSource (ctx: RunContext, size: number): Promise<string> {
  const source = path.join(ctx.dir, 'buffered-source.img')
  if (!existsSync(source)) await runProc('sh', ['-c', `head -c ${size} /dev/urandom > ${source}.part && mv ${source}.part ${source}`], 300_000)
  return source
}

/** Whole-file passes through the page cache, timed from start to end (dd's fsync included). */
async function measureBuffered (file: string, row: Row, ctx: RunContext): Promise<Sample> {
  const size = ctx.exports[row.export].size
  let args: [string, string[]]
  if (row.buffered === 'cp') {
    args = ['cp', [await localSource(ctx, size), file]]
  } else if (row.rw === 'write') {
    args = ['dd', [`if=${await localSource(ctx, size)}`, `of=${file}`, `bs=${row.bs}`, 'conv=fsync,notrunc']]
  } else {
    // Drop what the page cache holds of the file (GNU dd: nocache with count=0), so the pass
    // reads from the daemon, not from memory.
    await runProc('dd', [`if=${file}`, 'iflag=nocache', 'count=0'], 60_000)
    args = ['dd', [`if=${file}`, 'of=/dev/null', `bs=${row.bs}`]]
  }
  const t0 = performance.now()
  await runProc(args[0], args[1], 300_000)
  return { value: bandwidth(size, (performance.now() - t0) / 1000) }
}

async function measure (file: string, row: Row, ctx: RunContext): Promise<Sample> {
  const size = ctx.exports[row.export].size
  if (row.buffered !== undefined) return await measureBuffered(file, row, ctx)
  if (row.id.endsWith('copy')) {
    const t0 = performance.now()
    await runProc('dd', [`if=${file}`, 'of=/dev/null', `bs=${row.bs}`, 'iflag=direct'], 300_000)
    return { value: bandwidth(size, (performance.now() - t0) / 1000) }
  }
  const args = ['--name=bench', `--filename=${file}`, '--ioengine=libaio', '--direct=1', `--rw=${row.rw}`, `--bs=${row.bs}`,
    `--iodepth=${row.qd}`, `--numjobs=${row.jobs ?? 1}`, '--group_reporting', `--size=${size}`, `--runtime=${ctx.seconds}`,
    '--time_based', '--ramp_time=0.5', '--output-format=json']
  const { stdout } = await runProc('fio', args, (ctx.seconds + 60) * 1000)
  const json = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: Array<Record<'read' | 'write', { iops: number, bw_bytes: number }>> }
  const side = json.jobs[0]![row.rw.endsWith('write') ? 'write' : 'read']
  return { value: row.unit === 'IOPS' ? side.iops : side.bw_bytes / (1 << 20) }
}

/** Peak resident memory of a process (VmHWM), MiB. */
function peakRss (pid: number): number | undefined {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m === null ? undefined : Number(m[1]) / 1024
  } catch {
    return undefined
  }
}

/**
 * `nbdts mount` with its defaults (connections: auto, 4 with these servers), or with
 * `--connections N`; `baseline` mounts with another build's CLI instead (bench --baseline);
 * `options` adds `-o OPTIONS` (bench --mount-variants: the same build with other settings, a
 * reference measured in the same run).
 */
export function nbdtsMount (connections: number | 'auto' = 'auto', baseline?: { dir: string, label: string }, options?: string): Contender {
  let file = ''
  let pid = 0
  let peak: number | undefined
  const cli = baseline === undefined ? CLI : path.join(baseline.dir, 'dist/cli/main.js')
  const name = (connections === 'auto' ? 'nbdts mount' : `nbdts mount -C ${connections}`) + (options === undefined ? '' : ` -o ${options}`)
  const reference = baseline !== undefined || options !== undefined
  return {
    name: baseline === undefined ? name : `${name} @${baseline.label}`,
    ours: !reference,
    ...(baseline !== undefined
      ? { note: `nbdts mount built from ${baseline.label} (bench --baseline); a reference for before/after` }
      : options !== undefined
        ? { note: `nbdts mount -o ${options} (bench --mount-variants): this build with other settings, a reference` }
        : connections === 'auto' ? { note: 'nbdts mount: the defaults (4 connections when the server allows multi-conn, as nbdfuse); daemon peak RSS is VmHWM after the suite' } : {}),
    supports: (row) => row.kind === 'fuse',
    async setUp (ctx) {
      const e = ctx.exports.mem
      const variant = options === undefined ? '' : `-${options.replace(/[^a-z0-9]+/gi, '_')}`
      file = path.join(ctx.dir, `nbdts-${String(connections)}${baseline === undefined ? '' : `-${baseline.label}`}${variant}.img`)
      const pidfile = `${file}.pid`
      writeFileSync(file, '')
      await runProc(process.execPath, [cli, 'mount', e.uri, file, '--connections', String(connections), '--pidfile', pidfile,
        '--control-socket', `${file}.ctl`, ...(options === undefined ? [] : ['-o', options])], 60_000)
      pid = Number(readFileSync(pidfile, 'utf8').trim())
    },
    async tearDown () {
      peak = peakRss(pid)
      await runProc(process.execPath, [cli, 'umount', file], 60_000)
    },
    peakRssMiB: () => peakRss(pid) ?? peak,
    run: async (row, ctx) => await measure(file, row, ctx)
  }
}

export function nbdfuse (connections = 4): Contender {
  let dir = ''
  let child: ChildProcess | undefined
  return {
    name: `nbdfuse -C ${connections}`,
    ours: false,
    note: 'nbdfuse opens -C connections but sends requests over only C - 1 of them (peers.md §1.5)',
    supports: (row) => row.kind === 'fuse',
    async setUp (ctx) {
      dir = path.join(ctx.dir, `nbdfuse-${connections}`)
      mkdirSync(dir, { recursive: true })
      const pidfile = `${dir}.pid`
      child = spawn('nbdfuse', ['-C', String(connections), '-P', pidfile, dir, ctx.exports.mem.uri], { stdio: 'ignore' })
      for (let i = 0; i < 500 && !existsSync(pidfile); i++) await sleep(20)
      if (!existsSync(pidfile)) throw new Error('nbdfuse did not become ready')
    },
    async tearDown () {
      await runProc('fusermount3', ['-u', dir], 60_000)
      await new Promise((resolve) => { if (child?.exitCode !== null) resolve(undefined); else child.once('exit', resolve) })
    },
    run: async (row, ctx) => await measure(path.join(dir, 'nbd'), row, ctx)
  }
}
