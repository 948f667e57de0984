/**
 * What the durability tests share: a private directory with image files, nbdkit servers that
 * lose unflushed writes on kill -9 (the cache filter in writeback mode over a file: the cache
 * dies with the process, the file is what is durable), and small waits with bounds.
 */
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { NbdClient } from '../../src/index.ts'
import { startNbdkit, testScene, type RunningServer } from '../helpers/servers.ts'

export const KiB = 1024
export const MiB = 1 << 20

export interface DurabilityScene {
  readonly dir: string
  /** A zero-filled image file of `size` bytes. */
  image: (name: string, size: number) => string
  /**
   * nbdkit on `name`.sock. Called again with the same name (after the first was killed), it
   * starts a server with other arguments on the same socket: a restart that behaves differently.
   */
  nbdkit: (name: string, args: string[]) => Promise<RunningServer>
  /** Closes the client after the test (before the servers stop). */
  client: (client: NbdClient) => NbdClient
  file: (name: string) => string
}

export function durabilityScene (): DurabilityScene {
  const scene = testScene()
  return {
    dir: scene.dir,
    image: (name, size) => {
      const file = path.join(scene.dir, name)
      writeFileSync(file, Buffer.alloc(size))
      return file
    },
    nbdkit: async (name, args) => {
      const server = await startNbdkit(scene.dir, args, name)
      scene.defer(() => server.stop('SIGKILL'))
      return server
    },
    client: (client) => {
      scene.defer(() => client.close())
      return client
    },
    file: (name) => path.join(scene.dir, name)
  }
}

/** The file plugin behind a writeback cache: what nbdkit acknowledged is lost on kill -9 unless flushed. */
export function volatileFile (image: string, filters: string[] = [], params: string[] = []): string[] {
  return [...filters.map((f) => `--filter=${f}`), '--filter=cache', 'file', image, 'cache=writeback', ...params]
}

/** `length` bytes that say which write they came from (tag), so a wrong read shows whose data it is. */
export function pattern (tag: number, length: number): Buffer {
  const b = Buffer.alloc(length)
  for (let i = 0; i < length; i += 4) b.writeUInt32LE(((tag * 0x9e3779b1) ^ i) >>> 0, i)
  return b
}

/** Waits until every connection of `client` is connected, `ms` at most. */
export async function connected (client: NbdClient, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!client.states().every((s) => s === 'CONNECTED')) {
    if (Date.now() > deadline) throw new Error(`not connected within ${ms} ms: ${client.states().join(', ')}`)
    await sleep(10)
  }
}

/** Which tag a buffer carries (0: zeroes, -1: neither zeroes nor any of `tags`). */
export function whose (data: Buffer, tags: readonly number[]): number {
  if (data.every((b) => b === 0)) return 0
  for (const t of tags) if (data.equals(pattern(t, data.length))) return t
  return -1
}

/** Fast reconnects: the tests kill and restart servers within a second. */
export const QUICK_BACKOFF = { initialMs: 50, maxMs: 200 } as const
