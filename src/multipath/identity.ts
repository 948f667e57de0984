/**
 * What makes two paths the same export. Always: what a reconnect must keep (size, the
 * capabilities in use, block sizes, reply mode, meta contexts, TLS: reconnect-check.ts).
 * Optionally, an identity the user names, because two servers can export equal-sized disks
 * that are not the same disk:
 *
 *   'description'              the export descriptions (NBD_INFO_DESCRIPTION) are equal
 *   { offset, length }         the SHA-256 of those bytes is equal on every path (a label or
 *                              superblock that does not change: the first connection's is the
 *                              reference)
 */
import type { ExportInfo } from '../connector/export-info.ts'
import { checkReconnectedExport } from '../client/reconnect-check.ts'

export type PathIdentity = 'export' | 'description' | { readonly offset: number, readonly length: number }

/** Why `info` is not the export `reference` is, or undefined when it is. */
export function identityProblem (reference: ExportInfo, info: ExportInfo, identity: PathIdentity): string | undefined {
  const problem = checkReconnectedExport(reference, info)
  if (problem !== undefined) return problem
  if (identity === 'description' && info.description !== reference.description) {
    return `its description is ${JSON.stringify(info.description ?? '')}, not ${JSON.stringify(reference.description ?? '')}`
  }
  return undefined
}

/** node:crypto is loaded on the first digest, not by every client that imports this file (`nbdts info`). */
export function digestOf (bytes: Uint8Array): string {
  return process.getBuiltinModule('node:crypto').createHash('sha256').update(bytes).digest('hex')
}
