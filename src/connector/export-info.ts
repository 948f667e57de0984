/**
 * What the handshake learnt about the export: everything a request needs to decide what it
 * may send, and what `nbdts info` prints.
 */
import { NBD_FLAG } from '../protocol/constants.ts'
import type { BlockSizeConstraints } from '../protocol/info.ts'
import type { ReplyMode } from '../protocol/reply.ts'

export interface ExportInfo {
  /** The name we asked for. */
  readonly exportName: string
  /** The server's canonical name for it (NBD_INFO_NAME), when given. */
  readonly canonicalName: string | undefined
  readonly description: string | undefined
  readonly size: bigint
  /** Transmission flags we may act on (inconsistent ones cleared, see usableTransmissionFlags). */
  readonly flags: number
  /** Transmission flags as the server sent them. */
  readonly serverFlags: number
  /** Block size constraints as advertised; undefined when the server sent none. */
  readonly blockSize: BlockSizeConstraints | undefined
  readonly mode: ReplyMode
  /** 'newstyle-fixed', or 'newstyle' for a server that only knows NBD_OPT_EXPORT_NAME. */
  readonly protocol: 'newstyle' | 'newstyle-fixed'
  readonly tls: boolean
  /** Selected meta contexts, id → name. IDs are only valid on this connection. */
  readonly contexts: ReadonlyMap<number, string>
  /** Every meta context the export offers, when the caller asked (NBD_OPT_LIST_META_CONTEXT). */
  readonly availableContexts: readonly string[] | undefined
}

export const can = (info: ExportInfo, flag: number): boolean => (info.flags & flag) !== 0
export const isReadOnly = (info: ExportInfo): boolean => can(info, NBD_FLAG.READ_ONLY)
