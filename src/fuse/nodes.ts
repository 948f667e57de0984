/**
 * The node model: a filesystem of one file, the export. Mounted over a regular file, the root
 * node is the file; mounted on a directory, the root is that directory and the export is its
 * only entry. Nodes live as long as the mount (nodeids are never reused, FORGET is a no-op).
 *
 *   file layout   nodeid 1 = the export (S_IFREG)
 *   dir layout    nodeid 1 = directory ─── NAME ──► nodeid 2 = the export
 *
 * Who may open the export is the kernel's business (default_permissions): it checks these
 * modes and owners, and without allow_other lets no one but the mounting user in at all.
 */
import { DT_DIR, DT_REG, FUSE_ROOT_ID, S_IFDIR, S_IFREG } from './abi.ts'
import type { Attributes, DirEntry } from './codec.ts'

export type Layout = { readonly kind: 'file' } | { readonly kind: 'dir', readonly name: string }

/** Owner and permission bits of the export (-o uid=, gid=, mode=). */
export interface Access {
  readonly uid: number
  readonly gid: number
  /** Permission bits of the export file (0o7777 at most); write bits are dropped when read-only. */
  readonly mode: number
}

export const EXPORT_ID = 2
const BLKSIZE = 4096

/**
 * The directory's bits follow the file's: a class that may read or write the file may list
 * and enter the directory (r-x); no class may create anything in it.
 */
export function directoryMode (fileMode: number): number {
  let mode = 0
  for (const shift of [6, 3, 0]) {
    if (((fileMode >> shift) & 0o7) !== 0) mode |= 0o5 << shift
  }
  return mode
}

export class ExportNodes {
  readonly layout: Layout
  /** The export's nodeid: the root in the file layout, 2 in the directory layout. */
  readonly exportId: number
  readonly #fileMode: number
  readonly #dirMode: number
  readonly #access: Access
  readonly #size: number | bigint
  readonly #time = Math.floor(Date.now() / 1000)
  readonly #blksize: number

  /** `blksize`: the export's st_blksize (the I/O size cp and friends pick). */
  constructor (layout: Layout, access: Access, readonly: boolean, size: bigint, blksize = BLKSIZE) {
    this.#blksize = blksize
    this.layout = layout
    this.exportId = layout.kind === 'file' ? FUSE_ROOT_ID : EXPORT_ID
    this.#access = access
    const bits = access.mode & 0o7777 & (readonly ? ~0o222 : ~0)
    this.#fileMode = S_IFREG | bits
    this.#dirMode = S_IFDIR | directoryMode(bits)
    this.#size = size <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(size) : size
  }

  known (nodeid: number): boolean {
    return nodeid === FUSE_ROOT_ID || (this.layout.kind === 'dir' && nodeid === EXPORT_ID)
  }

  /** The nodeid of `name` in directory `parent`, if there is one. */
  lookup (parent: number, name: string): number | undefined {
    if (parent !== FUSE_ROOT_ID || this.layout.kind !== 'dir' || name !== this.layout.name) return undefined
    return EXPORT_ID
  }

  isDirectory (nodeid: number): boolean {
    return this.layout.kind === 'dir' && nodeid === FUSE_ROOT_ID
  }

  /** `blocks`: 512-byte blocks allocated to the export (st_blocks). */
  attributes (nodeid: number, blocks: bigint): Attributes {
    const { uid, gid } = this.#access
    const base = { uid, gid, time: this.#time, blksize: BLKSIZE }
    if (nodeid === this.exportId) return { ...base, blksize: this.#blksize, ino: nodeid, size: this.#size, blocks, mode: this.#fileMode, nlink: 1 }
    return { ...base, ino: nodeid, size: BLKSIZE, blocks: BLKSIZE / 512, mode: this.#dirMode, nlink: 2 }
  }

  /** READDIR of the root directory. */
  entries (): DirEntry[] {
    if (this.layout.kind !== 'dir') return []
    return [
      { ino: FUSE_ROOT_ID, name: '.', type: DT_DIR },
      { ino: FUSE_ROOT_ID, name: '..', type: DT_DIR },
      { ino: EXPORT_ID, name: this.layout.name, type: DT_REG }
    ]
  }

  get fileCount (): number {
    return this.layout.kind === 'dir' ? 2 : 1
  }
}
