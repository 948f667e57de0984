/**
 * The bench's own nbdkit servers, in a private directory, stopped by pid at the end:
 *
 *   mem      memory, pre-filled with random data (reads must return data, not holes); Unix socket
 *   mem-tcp  the same on TCP loopback (a port nothing else uses)
 *   sparse   sparse-random, 10% data in 1 MiB runs: a copy should skip the holes
 *   tls      memory behind --tls=require with a PSK (psktool), pre-filled; Unix socket
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync } from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { runProc } from './proc.ts'

export type ExportName = 'mem' | 'mem-tcp' | 'sparse' | 'tls'

export interface BenchExport {
  readonly name: ExportName
  readonly uri: string
  readonly size: number
  /** For clients without URIs. */
  readonly socket?: string
  readonly port?: number
  /** TLS with a PSK: the directory holding keys.psk (QEMU's tls-creds-psk layout) and the user. */
  readonly psk?: { readonly dir: string, readonly file: string, readonly username: string }
  readonly description: string
}

export interface Servers {
  readonly exports: Record<ExportName, BenchExport>
  stop: () => Promise<void>
}

async function freePort (): Promise<number> {
  for (let port = 10930; port < 11000; port++) {
    const free = await new Promise<boolean>((resolve) => {
      const s = net.createServer().once('error', () => resolve(false)).listen(port, '127.0.0.1', () => { s.close(() => resolve(true)) })
    })
    if (free) return port
  }
  throw new Error('no free port in 10930-10999')
}

export async function startServers (dir: string, size: number, progress: (text: string) => void): Promise<Servers> {
  const children: ChildProcess[] = []
  const start = async (name: string, args: string[]): Promise<void> => {
    const pidfile = path.join(dir, `${name}.pid`)
    const child = spawn('nbdkit', ['--exit-with-parent', '-f', '-P', pidfile, ...args], { stdio: ['ignore', 'ignore', 'inherit'] })
    children.push(child)
    for (let i = 0; i < 500 && !existsSync(pidfile); i++) await sleep(20)
    if (!existsSync(pidfile)) throw new Error(`nbdkit ${name} did not start`)
  }
  const socket = (name: string): string => path.join(dir, `${name}.sock`)
  const port = await freePort()
  await start('mem', ['-U', socket('mem'), 'memory', String(size)])
  await start('mem-tcp', ['-i', '127.0.0.1', '-p', String(port), 'memory', String(size)])
  await start('sparse', ['-U', socket('sparse'), 'sparse-random', String(size), 'seed=42', 'percent=10', 'runlength=1048576'])
  const pskDir = path.join(dir, 'psk')
  mkdirSync(pskDir, { mode: 0o700 })
  const pskFile = path.join(pskDir, 'keys.psk')
  await runProc('psktool', ['-u', 'bench', '-p', pskFile], 10_000)
  await start('tls', ['-U', socket('tls'), '--tls=require', `--tls-psk=${pskFile}`, 'memory', String(size)])
  const exports: Record<ExportName, BenchExport> = {
    'mem': { name: 'mem', uri: `nbd+unix:///?socket=${socket('mem')}`, socket: socket('mem'), size, description: `nbdkit memory ${size >> 20} MiB, random data, Unix socket` },
    'mem-tcp': { name: 'mem-tcp', uri: `nbd://127.0.0.1:${port}/`, port, size, description: `nbdkit memory ${size >> 20} MiB, random data, TCP loopback` },
    'sparse': { name: 'sparse', uri: `nbd+unix:///?socket=${socket('sparse')}`, socket: socket('sparse'), size, description: `nbdkit sparse-random ${size >> 20} MiB, 10% data, Unix socket` },
    'tls': {
      name: 'tls',
      uri: `nbds+unix://bench@/?socket=${socket('tls')}&tls-psk-file=${pskFile}`,
      socket: socket('tls'),
      size,
      psk: { dir: pskDir, file: pskFile, username: 'bench' },
      description: `nbdkit memory ${size >> 20} MiB, random data, --tls=require with a PSK, Unix socket`
    }
  }
  for (const e of [exports.mem, exports['mem-tcp'], exports.tls]) {
    progress(`pre-filling ${e.name} with random data`)
    await runProc('bash', ['-c', `head -c ${size} /dev/urandom | nbdcopy - '${e.uri}'`], 300_000)
  }
  return {
    exports,
    stop: async () => {
      await Promise.all(children.map(async (c) => {
        if (c.exitCode !== null || c.signalCode !== null) return
        c.kill()
        await new Promise((resolve) => c.once('exit', resolve))
      }))
    }
  }
}
