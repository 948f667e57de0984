/**
 * Mounting an export: check and pin the target, mount it (root: /dev/fuse and mount(8);
 * everyone else: fusermount3), start the device reader, wait for the kernel's INIT.
 * Unmounting is the reverse, in an order that loses nothing: finish what is in flight, FLUSH,
 * unmount, then let go of the device.
 *
 *   mount()     pin target ─► mount on /proc/self/fd/N (or fusermount3) ─► check mountinfo
 *               ─► device reader ─► INIT ─► first allocation count ─► ready
 *   unmount()   in-flight done ─► NBD FLUSH ─► umount ─┬─► device ends ─► FLUSH ─► closed
 *                                                      └─ busy: detach (umount -l) and go on
 *                                                         serving until the last user closes
 *
 * Nothing here aborts the FUSE connection: a loop device or an open file over a busy mount
 * keeps working until it lets go. Only `nbdts umount --force` aborts.
 */
import { closeSync, openSync } from 'node:fs'
import path from 'node:path'
import type { NbdClient } from '../client/nbd-client.ts'
import { InvalidArgumentError, MountError } from '../errors.ts'
import { IN_HEADER, S_IFDIR, S_IFREG, WRITE_IN } from './abi.ts'
import type { AllocationOptions } from './allocation.ts'
import { busyPoll } from '../transport/busy-poll.ts'
import { FuseChannel } from './channel.ts'
import { IdleTrim } from './idle-trim.ts'
import { mountState } from './daemon-check.ts'
import { ExportFileSystem, type FuseStats } from './file-system.ts'
import { mountWithFusermount } from './fusermount.ts'
import { describeHolders } from './holders.ts'
import type { LogFn } from './log.ts'
import { parseMountOptions } from './mount-options.ts'
import { pinMountTarget, type PinnedTarget } from './mount-point.ts'
import { DEFAULT_READAHEAD_KIB, setReadahead } from './readahead.ts'
import { connectionNumber, mountFuse, nbdtsMountAt, nbdtsMountWithSource, unmount } from './mount-table.ts'
import { directoryMode, type Layout } from './nodes.ts'
import { trimHeap } from '../util/libc.ts'

export interface MountExportOptions {
  readonly client: NbdClient
  /** A regular file (the export is mounted over it) or a directory (the export appears in it). */
  readonly path: string
  /** The export's name inside a directory mount (nbdfuse's name). @default 'nbd' */
  readonly name?: string
  /** Refuse writes, even if the export allows them. */
  readonly readonly?: boolean
  /** `-o` mount options (mount-options.ts): allow_other, uid=, gid=, mode=, kernel_cache, ... */
  readonly options?: readonly string[]
  /** Largest READ/WRITE the kernel sends. @default 1 MiB */
  readonly maxWrite?: number
  /** FUSE requests that can be held at once (device read slots). @default 128 */
  readonly slots?: number
  /**
   * Who reads the device (device-reader.ts); overrides `-o reader=`. @default 'drain' where
   * koffi can poll, else 'thread'
   */
  readonly reader?: 'drain' | 'thread'
  readonly log?: LogFn
  /** Pacing of the st_blocks count (tests make it quick). */
  readonly allocation?: AllocationOptions
  /** Runs after the target is checked and pinned, before the mount (tests swap it there). */
  readonly beforeMount?: () => void | Promise<void>
}

export const DEFAULT_NAME = 'nbd'
const INIT_TIMEOUT = 10_000

export class FuseMount {
  readonly path: string
  /** Where the export can be opened: `path` itself, or `path/name`. */
  readonly file: string
  readonly layout: Layout
  readonly readonly: boolean
  /** The FUSE connection number (its fusectl directory). */
  readonly connection: number
  /** Resolves with the reason once the filesystem is gone (unmounted, aborted). */
  readonly closed: Promise<string>
  readonly #channel: FuseChannel
  readonly #fs: ExportFileSystem
  readonly #client: NbdClient
  readonly #log: LogFn
  readonly #idleTrim: IdleTrim
  #unmounting: Promise<void> | null = null

  private constructor (args: { path: string, layout: Layout, readonly: boolean, channel: FuseChannel, fs: ExportFileSystem, client: NbdClient, log: LogFn, connection: number }) {
    this.path = args.path
    this.layout = args.layout
    this.file = args.layout.kind === 'file' ? args.path : path.join(args.path, args.layout.name)
    this.readonly = args.readonly
    this.connection = args.connection
    this.#channel = args.channel
    this.#fs = args.fs
    this.#client = args.client
    this.#log = args.log
    const channel = args.channel
    this.#idleTrim = new IdleTrim({
      activity: () => channel.repliesWritten,
      trim: () => { args.fs.trim(); channel.trim(); trimHeap() }
    }, args.log)
    let destroyed: (reason: string) => void = () => {}
    const destroy = new Promise<string>((resolve) => { destroyed = resolve })
    args.fs.onDestroy = () => { destroyed('unmounted (DESTROY)') }
    this.closed = Promise.race([args.channel.ended, destroy])
  }

  static async mount (options: MountExportOptions): Promise<FuseMount> {
    const log = options.log ?? (() => {})
    const target = path.resolve(options.path)
    const opts = parseMountOptions(options.options ?? [])
    await cleanStaleMount(target, log)
    const uid = process.geteuid?.() ?? 0
    const gid = process.getegid?.() ?? 0
    let pinned: PinnedTarget
    try {
      pinned = pinMountTarget(target, uid)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new MountError('unsafe-target', `${target} does not exist: create an empty file (mounted over) or a directory first`)
      }
      throw err
    }
    const kind = pinned.kind
    const name = options.name ?? DEFAULT_NAME
    if (kind === 'dir' && (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0'))) {
      closeSync(pinned.fd)
      throw new InvalidArgumentError(`--name ${JSON.stringify(name)} is not a file name`)
    }
    const layout: Layout = kind === 'file' ? { kind } : { kind, name }
    const readonly = options.readonly === true || opts.readonly || options.client.isReadOnly
    const access = { uid: opts.uid ?? uid, gid: opts.gid ?? gid, mode: opts.mode }
    const bits = opts.mode & (readonly ? ~0o222 : ~0)
    const rootMode = kind === 'file' ? S_IFREG | bits : S_IFDIR | directoryMode(bits)
    const kernel = ['default_permissions', ...(opts.allowOther ? ['allow_other'] : []), readonly ? 'ro' : 'rw', 'nosuid', 'nodev', ...opts.kernel]
    // The source names the daemon; `nbdts umount` checks the claim (daemon-check.ts).
    const source = `nbdts:${process.pid}`
    const maxWrite = options.maxWrite ?? 1024 * 1024

    let fd = -1
    let mounted = false
    let channel: FuseChannel | undefined
    let fs: ExportFileSystem | undefined
    try {
      await options.beforeMount?.()
      if (uid === 0) {
        fd = openSync('/dev/fuse', 'r+')
        await mountFuse({ fd, targetFd: pinned.fd, rootMode, uid, gid, source, options: ['subtype=nbdts', ...kernel] })
      } else {
        fd = await mountWithFusermount({ path: target, source, options: kernel })
      }
      mounted = true
      closeSync(pinned.fd)
      pinned = { ...pinned, fd: -1 }
      const entry = nbdtsMountAt(target)
      if (entry?.source !== source) {
        // Mounted on the pinned inode, which is no longer at the target: undo it.
        const elsewhere = nbdtsMountWithSource(source)
        if (elsewhere !== undefined) await unmount(elsewhere.mountPoint, { lazy: true }).catch(() => {})
        mounted = false
        throw new MountError('unsafe-target', `refusing to mount over ${target}: it was moved or replaced while being mounted (the mount was undone)`)
      }
      const reader = options.reader ?? opts.reader
      // Process-wide: this daemon spins while requests flow (the highest budget asked wins).
      busyPoll.enable(opts.busyPollUs)
      channel = new FuseChannel({ fd, slotCount: options.slots ?? 128, slotSize: IN_HEADER + WRITE_IN + maxWrite + 4096, ...(reader !== undefined && { reader }) },
        (request, slot) => { fs!.handle(request, slot) })
      fs = new ExportFileSystem(channel, {
        client: options.client, layout, readonly, access, maxWrite, keepCache: opts.keepCache, log,
        ...(opts.blksize !== undefined && { blksize: opts.blksize }),
        ...(options.allocation !== undefined && { allocation: options.allocation })
      })
      // The kernel sends INIT right after mount(2); nothing works until it is answered.
      let timer: NodeJS.Timeout | undefined
      const initTimeout = new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => { reject(new Error(`the kernel sent no FUSE INIT within ${INIT_TIMEOUT} ms`)) }, INIT_TIMEOUT)
      })
      try {
        await Promise.race([fs.initialised, initTimeout, channel.ended.then((why) => { throw new Error(`FUSE device closed during mount: ${why}`) })])
      } finally {
        clearTimeout(timer)
      }
      await fs.allocation.step(1000, 4096)
      if (!setReadahead(entry.device, opts.readaheadKiB ?? DEFAULT_READAHEAD_KIB) && opts.readaheadKiB !== undefined) {
        log('warn', `-o readahead=${opts.readaheadKiB} ignored: only root may set a mount's readahead`)
      }
      const mount = new FuseMount({ path: target, layout, readonly, channel, fs, client: options.client, log, connection: connectionNumber(entry) })
      log('info', `mounted ${mount.file} (${readonly ? 'read-only' : 'read-write'}, ${options.client.sizeBigInt} bytes, ${uid === 0 ? 'mount(8)' : 'fusermount3'}, -o ${kernel.join(',')}, ${channel.reader} reader)`)
      return mount
    } catch (err) {
      fs?.close()
      if (mounted) await unmount(target, { lazy: true }).catch(() => {})
      if (channel !== undefined) channel.close()
      else if (fd >= 0) closeSync(fd)
      throw err
    } finally {
      if (pinned.fd >= 0) closeSync(pinned.fd)
    }
  }

  get stats (): FuseStats {
    return this.#fs.stats
  }

  /**
   * Unmounts in an order that loses nothing: requests in flight finish (up to `drainMs`), the
   * export is flushed, then the filesystem is unmounted. When it is busy (a loop device, an
   * open file) it is detached instead (`busy: 'detach'`, the default), and served until the
   * last user lets go: the promise settles only then. `busy: 'refuse'` rejects with a
   * MountError ('busy') naming the holders and leaves the mount as it was (unmount may be
   * called again); `busy: 'force'` aborts its I/O, as `nbdts umount --force` does.
   */
  unmount (options: { drainMs?: number, busy?: 'detach' | 'refuse' | 'force' } = {}): Promise<void> {
    this.#unmounting ??= this.#unmount(options.drainMs ?? 30_000, options.busy ?? 'detach')
    const unmounting = this.#unmounting
    // A refused unmount changed nothing: the next call tries again.
    unmounting.catch(() => { if (this.#unmounting === unmounting) this.#unmounting = null })
    return unmounting
  }

  async #unmount (drainMs: number, onBusy: 'detach' | 'refuse' | 'force'): Promise<void> {
    // Forced means nothing waits for an absent server: the flush runs only if every
    // connection is up now (a FLUSH that waited would wait the reconnect delay).
    const wait = onBusy !== 'force'
    if (await settledWithin(this.closed, 0) === undefined) {
      await settledWithin(this.#fs.idle(), drainMs)
      await this.#flush(wait)
      try {
        await unmount(this.path)
      } catch (err) {
        const busy = err instanceof MountError && err.reason === 'busy'
        if (busy && onBusy === 'refuse') throw new MountError('busy', `${this.path} is busy (${describeHolders(this.file, this.path)}), so it stays mounted`)
        const force = busy && onBusy === 'force'
        this.#log('warn', busy
          ? `${this.path} is busy (${describeHolders(this.file, this.path)}): ${force ? 'aborting its I/O (forced)' : 'detached it; serving until the last user lets go'}`
          : `unmounting ${this.path}: ${(err as Error).message}; detaching it`)
        await unmount(this.path, { lazy: true, force }).catch((e: unknown) => { this.#log('error', `detaching ${this.path}: ${(e as Error).message}`) })
      }
      await this.closed
    }
    this.#fs.close()
    this.#idleTrim.stop()
    await this.#flush(wait)
    this.#channel.close()
  }

  async #flush (wait: boolean): Promise<void> {
    if (!this.#client.canFlush || this.#client.state === 'QUIT') return
    if (!wait && this.#client.states().some((state) => state !== 'CONNECTED')) {
      this.#log('warn', 'not flushed before unmount: the server is away, and the unmount is forced')
      return
    }
    try {
      // Forced: a server that is there answers within seconds; a hung one is not waited for.
      await this.#client.flush(wait ? {} : { signal: AbortSignal.timeout(FORCED_FLUSH_MS) })
    } catch (err) {
      this.#log('warn', `flush before unmount failed: ${(err as Error).message}`)
    }
  }
}

/** How long a forced unmount's FLUSH may take (a server that is there answers at once). */
const FORCED_FLUSH_MS = 2000

/**
 * A mount left behind by a crashed earlier run answers ENOTCONN: detach it, and say so. A live
 * mount (another nbdts still serving) is an error.
 */
export async function cleanStaleMount (target: string, log: LogFn): Promise<void> {
  const existing = nbdtsMountAt(target)
  if (existing === undefined) return
  if (mountState(existing) !== 'stale') throw new MountError('busy', `${target} is already mounted by a running nbdts (unmount it with: nbdts umount ${target})`)
  log('warn', `${target} holds a stale nbdts mount left by a crashed earlier run; cleaning it up`)
  await unmount(target, { lazy: true })
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
