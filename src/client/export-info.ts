/**
 * What the handshake said about an export, as the public API hands it out: the connector's
 * record (connector/export-info.ts) with the size in the package's one number model — a
 * number, exact up to 2^53 bytes, and `sizeBigInt` beside it, exact at any size.
 */
import { OffsetRangeError } from '../errors.ts'
import type { ExportInfo as NegotiatedExport } from '../connector/export-info.ts'
import type { ListedExport as NegotiatedListing } from '../connector/list-exports.ts'
import type { BlockSizeConstraints } from '../protocol/info.ts'

/** Everything the handshake said about an export: `client.info`, and each entry of `NbdClient.list()`. */
export interface ExportInfo {
  /** The name we asked for. */
  readonly exportName: string
  /** The server's canonical name for it (NBD_INFO_NAME), when given. */
  readonly canonicalName: string | undefined
  readonly description: string | undefined
  /**
   * The size in bytes, as `client.size`: a number, exact up to 2^53 (8 PiB). Past that, reading
   * it throws an OffsetRangeError (`NBD_ERR_RANGE`): use `sizeBigInt`.
   */
  readonly size: number
  /** The size in bytes, exact at any size. */
  readonly sizeBigInt: bigint
  /** Transmission flags we may act on (`NBD_FLAG` of nbdts/protocol; inconsistent ones cleared). */
  readonly flags: number
  /** Transmission flags as the server sent them. */
  readonly serverFlags: number
  /** Block size constraints as advertised; undefined when the server sent none. */
  readonly blockSize: BlockSizeConstraints | undefined
  /** The replies negotiated: `'simple'`, `'structured'` or `'extended'` (extended headers). */
  readonly mode: 'simple' | 'structured' | 'extended'
  /** 'newstyle-fixed', or 'newstyle' for a server that only knows NBD_OPT_EXPORT_NAME. */
  readonly protocol: 'newstyle' | 'newstyle-fixed'
  readonly tls: boolean
  /** Selected meta contexts, id → name. IDs are only valid on this connection. */
  readonly contexts: ReadonlyMap<number, string>
  /** Every meta context the export offers, when asked for (`listContexts: true`). */
  readonly availableContexts: readonly string[] | undefined
}

/** One export of `NbdClient.list()`. */
export interface ListedExport {
  readonly name: string
  readonly description: string
  /** What NBD_OPT_INFO said; undefined when the server refused INFO for this export. */
  readonly info: ExportInfo | undefined
  /** Why INFO failed, if it did. */
  readonly error: string | undefined
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER)

/** The public view of what the connector negotiated (frozen; `size` is a getter). */
export function exportInfo (info: NegotiatedExport): ExportInfo {
  const exact = info.size <= MAX_SAFE ? Number(info.size) : -1
  return Object.freeze({
    exportName: info.exportName,
    canonicalName: info.canonicalName,
    description: info.description,
    get size (): number {
      if (exact < 0) throw new OffsetRangeError(`the export is ${info.size} bytes, more than a number holds exactly: use sizeBigInt`)
      return exact
    },
    sizeBigInt: info.size,
    flags: info.flags,
    serverFlags: info.serverFlags,
    blockSize: info.blockSize,
    mode: info.mode,
    protocol: info.protocol,
    tls: info.tls,
    contexts: info.contexts,
    availableContexts: info.availableContexts
  })
}

export function listedExport (listed: NegotiatedListing): ListedExport {
  return { name: listed.name, description: listed.description, info: listed.info === undefined ? undefined : exportInfo(listed.info), error: listed.error }
}
