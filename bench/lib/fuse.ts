/**
 * FUSE contenders: the same export mounted by nbdts and by nbdfuse (libnbd), each measured
 * with fio on the mounted file (libaio, direct=1).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { runProc } from './proc.ts'
import type { Row, Sample } from './rows.ts'
import type { Contender, Target } from './contenders.ts'

const CLI = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url))

async function fioOnFile (file: string, row: Row, seconds: number, size: number): Promise<Sample> {
  const args = ['--name=bench', `--filename=${file}`, '--ioengine=libaio', '--direct=1', `--rw=${row.rw}`, `--bs=${row.bs}`,
    `--iodepth=${row.qd}`, `--numjobs=${row.jobs ?? 1}`, '--group_reporting', `--size=${size}`, `--runtime=${seconds}`,
    '--time_based', '--ramp_time=0.5', '--output-format=json']
  const { stdout } = await runProc('fio', args, (seconds + 60) * 1000)
  const json = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: Array<Record<'read' | 'write', { iops: number, bw_bytes: number }>> }
  const side = json.jobs[0]![row.rw.endsWith('write') ? 'write' : 'read']
  return { value: row.unit === 'IOPS' ? side.iops : side.bw_bytes / (1 << 20) }
}

export interface MountedContender extends Contender {
  mount: (target: Target, dir: string) => Promise<void>
  unmount: () => Promise<void>
}

export function nbdtsMount (args: string[] = []): MountedContender {
  let file = ''
  return {
    name: args.length === 0 ? 'nbdts mount' : `nbdts mount ${args.join(' ')}`,
    supports: () => true,
    async mount (target, dir) {
      file = path.join(dir, `nbdts-${args.join('-') || 'default'}.img`)
      writeFileSync(file, '')
      await runProc(process.execPath, [CLI, 'mount', target.uri, file, ...args], 60_000)
    },
    async unmount () {
      await runProc(process.execPath, [CLI, 'umount', file], 60_000)
    },
    run: async (row, target, seconds) => await fioOnFile(file, row, seconds, target.size)
  }
}

export function nbdfuseMount (connections = 4): MountedContender {
  let dir = ''
  let child: ChildProcess | undefined
  return {
    name: `nbdfuse -C ${connections}`,
    note: 'nbdfuse opens -C connections but sends requests over only C - 1 of them (peers.md §1.5)',
    supports: () => true,
    async mount (target, base) {
      dir = path.join(base, `nbdfuse-${connections}`)
      mkdirSync(dir, { recursive: true })
      const pidfile = path.join(base, `nbdfuse-${connections}.pid`)
      child = spawn('nbdfuse', ['-C', String(connections), '-P', pidfile, dir, target.uri], { stdio: 'ignore' })
      for (let i = 0; i < 500 && !existsSync(pidfile); i++) await sleep(20)
      if (!existsSync(pidfile)) throw new Error('nbdfuse did not become ready')
    },
    async unmount () {
      await runProc('fusermount3', ['-u', dir], 60_000)
      await new Promise((resolve) => { if (child?.exitCode !== null) resolve(undefined); else child.once('exit', resolve) })
    },
    run: async (row, target, seconds) => await fioOnFile(path.join(dir, 'nbd'), row, seconds, target.size)
  }
}
