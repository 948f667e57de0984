/**
 * Mounting an export: open /dev/fuse, mount(8) it over a file (or on a directory), start the
 * device reader, wait for the kernel's INIT. Unmounting is the reverse, in an order that loses
 * nothing: finish what is in flight, FLUSH, unmount, then let go of the device.
 *
 *   mount()     open /dev/fuse ─► mount -i -t fuse -o fd=3,... ─► reader thread ─► INIT ─► ready
 *   unmount()   in-flight done ─► NBD FLUSH ─► umount (or umount -l when busy) ─► device ends
 *               └─ if the device does not end (files held open after umount -l): abort the
 *                  FUSE connection through fusectl, so nothing waits on us forever
 */
import { spawnSync } from 'node:child_process'
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, statSync, writeFileSync } from 'node:fs'
import { stat } from 'node:fs/promises'
import path from 'node:path'
import type { NbdClient } from '../client/nbd-client.ts'
import { NBD_FLAG } from '../protocol/constants.ts'
import { IN_HEADER, WRITE_IN } from './abi.ts'
import { FuseChannel } from './channel.ts'
import { ExportFileSystem, type FuseStats, type Layout, type LogFn } from './filesystem.ts'
import { isStale, mountFuse, nbdtsMountAt, unmount } from './mount-table.ts'

export interface MountExportOptions {
  readonly client: NbdClient
  /** A regular file (the export is mounted over it) or a directory (the export appears in it). */
  readonly path: string
  /** The export's name inside a directory mount. @default 'disk' */
  readonly name?: string
  /** Refuse writes, even if the export allows them. */
  readonly readonly?: boolean
  /** Largest READ/WRITE the kernel sends. @default 1 MiB */
  readonly maxWrite?: number
  /** FUSE requests that can be held at once (device read slots). @default 128 */
  readonly slots?: number
  readonly log?: LogFn
}

const INIT_TIMEOUT = 10_000
const FUSECTL = '/sys/fs/fuse/connections'

export class FuseMount {
  readonly path: string
  /** Where the export can be opened: `path` itself, or `path/name`. */
  readonly file: string
  readonly layout: Layout
  readonly readonly: boolean
  /** Resolves with the reason once the filesystem is gone (unmounted, aborted). */
  readonly closed: Promise<string>
  readonly #channel: FuseChannel
  readonly #fs: ExportFileSystem
  readonly #client: NbdClient
  readonly #log: LogFn
  /** The FUSE connection number (fusectl), from the mount's device number. */
  readonly #connection: number
  #unmounting: Promise<void> | null = null

  private constructor (args: { path: string, layout: Layout, readonly: boolean, channel: FuseChannel, fs: ExportFileSystem, client: NbdClient, log: LogFn, connection: number }) {
    this.path = args.path
    this.layout = args.layout
    this.file = args.layout.kind === 'file' ? args.path : path.join(args.path, args.layout.name)
    this.readonly = args.readonly
    this.#channel = args.channel
    this.#fs = args.fs
    this.#client = args.client
    this.#log = args.log
    this.#connection = args.connection
    let destroyed: (reason: string) => void = () => {}
    const destroy = new Promise<string>((resolve) => { destroyed = resolve })
    args.fs.onDestroy = () => { destroyed('unmounted (DESTROY)') }
    this.closed = Promise.race([args.channel.ended, destroy])
  }

  static async mount (options: MountExportOptions): Promise<FuseMount> {
    const log = options.log ?? (() => {})
    const target = path.resolve(options.path)
    await cleanStaleMount(target, log)
    let kind: 'file' | 'dir'
    try {
      const st = statSync(target)
      if (st.isDirectory()) kind = 'dir'
      else if (st.isFile()) kind = 'file'
      else throw new Error(`${target} is neither a regular file nor a directory`)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new Error(`${target} does not exist: create an empty file (mounted over) or a directory first`)
      }
      throw err
    }
    const layout: Layout = kind === 'file' ? { kind } : { kind, name: options.name ?? 'disk' }
    const readonly = options.readonly === true || (options.client.info.flags & NBD_FLAG.READ_ONLY) !== 0
    const maxWrite = options.maxWrite ?? 1024 * 1024
    const uid = process.getuid?.() ?? 0
    const gid = process.getgid?.() ?? 0

    const fd = openSync('/dev/fuse', 'r+')
    let fs: ExportFileSystem | undefined
    let channel: FuseChannel | undefined
    let mounted = false
    try {
      // The source names the daemon, so `nbdts umount` can ask it to shut down cleanly.
      await mountFuse({ fd, path: target, kind, readonly, uid, gid, source: `nbdts:${process.pid}` })
      mounted = true
      channel = new FuseChannel({ fd, slotCount: options.slots ?? 128, slotSize: IN_HEADER + WRITE_IN + maxWrite + 4096 },
        (request, slot) => { fs!.handle(request, slot) })
      channel.onError = (err) => { log('error', `FUSE reply failed: ${err.message}`) }
      fs = new ExportFileSystem(channel, { client: options.client, layout, readonly, uid, gid, maxWrite, log })
      // The kernel sends INIT right after mount(2); nothing works until it is answered.
      const initTimeout = new Promise<never>((_resolve, reject) => {
        const timer = setTimeout(() => { reject(new Error(`the kernel sent no FUSE INIT within ${INIT_TIMEOUT} ms`)) }, INIT_TIMEOUT)
        fs!.initialised.finally(() => { clearTimeout(timer) }).catch(() => {})
      })
      await Promise.race([fs.initialised, initTimeout, channel.ended.then((why) => { throw new Error(`FUSE device closed during mount: ${why}`) })])
      await fs.refreshAllocation(1000).catch(() => {})
      // Never a synchronous call on our own mount: it would block the thread that answers it.
      const dev = (await stat(target)).dev
      const mount = new FuseMount({ path: target, layout, readonly, channel, fs, client: options.client, log, connection: (dev & 0xff) | ((dev >>> 12) & ~0xff) })
      log('info', `mounted ${kind === 'file' ? target : mount.file} (${readonly ? 'read-only' : 'read-write'}, ${options.client.size} bytes)`)
      return mount
    } catch (err) {
      if (mounted) await unmount(target, true).catch(() => {})
      if (channel !== undefined) channel.close()
      else closeSync(fd)
      throw err
    }
  }

  get stats (): FuseStats {
    return this.#fs.stats
  }

  /**
   * Unmounts in an order that loses nothing: requests in flight finish (up to `drainMs`), the
   * export is flushed, then the filesystem is unmounted (lazily when files are still open).
   */
  unmount (options: { drainMs?: number } = {}): Promise<void> {
    this.#unmounting ??= this.#unmount(options.drainMs ?? 30_000)
    return this.#unmounting
  }

  async #unmount (drainMs: number): Promise<void> {
    const gone = await settledWithin(this.closed, 0)
    if (gone === undefined) {
      await settledWithin(this.#fs.idle(), drainMs)
      await this.#flush()
      try {
        await unmount(this.path)
      } catch (err) {
        // Busy (a file is open, a loop device is attached): detach now, serve what remains.
        this.#log('warn', `umount ${this.path}: ${(err as Error).message}; detaching lazily`)
        await unmount(this.path, true).catch((e: unknown) => { this.#log('error', `umount -l ${this.path}: ${String(e)}`) })
      }
      if (await settledWithin(this.closed, 5000) === undefined) {
        // Still held open after a lazy unmount: abort the connection so nobody hangs on us.
        this.#log('warn', 'the filesystem is still in use after unmounting; aborting the FUSE connection')
        this.#abortConnection()
        await settledWithin(this.closed, 5000)
      }
    }
    await this.#flush()
    this.#channel.close()
  }

  async #flush (): Promise<void> {
    if ((this.#client.info.flags & NBD_FLAG.SEND_FLUSH) === 0 || this.#client.state === 'QUIT') return
    try {
      await this.#client.flush()
    } catch (err) {
      this.#log('warn', `flush before unmount failed: ${(err as Error).message}`)
    }
  }

  #abortConnection (): void {
    try {
      if (!existsSync(FUSECTL) || readdirSync(FUSECTL).length === 0) {
        // fusectl's standard place; systemd mounts it on most machines, we do when it has not.
        mkdirSync(FUSECTL, { recursive: true })
        spawnSync('mount', ['-t', 'fusectl', 'none', FUSECTL], { stdio: 'ignore' })
      }
      writeFileSync(path.join(FUSECTL, String(this.#connection), 'abort'), '1')
    } catch (err) {
      this.#log('error', `could not abort FUSE connection ${this.#connection}: ${(err as Error).message}`)
    }
  }
}

/**
 * A mount left behind by a crashed earlier run answers ENOTCONN: detach it, and say so. A live
 * mount (another nbdts still serving) is an error.
 */
export async function cleanStaleMount (target: string, log: LogFn): Promise<void> {
  const existing = nbdtsMountAt(target)
  if (existing === undefined) return
  if (!isStale(target)) throw new Error(`${target} is already mounted by a running nbdts (unmount it with: nbdts umount ${target})`)
  log('warn', `${target} holds a stale nbdts mount left by a crashed earlier run; cleaning it up`)
  await unmount(target, true)
}

/** The value if `promise` settles within `ms`, else undefined. */
async function settledWithin<T> (promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<undefined>((resolve) => { timer = setTimeout(() => { resolve(undefined) }, ms) })
  try {
    return await Promise.race([promise.catch(() => undefined), timeout])
  } finally {
    clearTimeout(timer)
  }
}
