/**
 * Unlike QEMU, we check the server we come back to. Our requests were shaped by the first
 * connection (size bounds, alignment, which commands and flags we send), and our callers'
 * data went to that export: a server that comes back different gets nothing.
 */
import { NBD_FLAG } from '../protocol/constants.ts'
import type { ExportInfo } from '../connector/export-info.ts'

/** Capabilities that, once in use, must still be offered. */
const KEPT_FLAGS = [
  [NBD_FLAG.SEND_FLUSH, 'flush'],
  [NBD_FLAG.SEND_FUA, 'FUA'],
  [NBD_FLAG.SEND_TRIM, 'trim'],
  [NBD_FLAG.SEND_WRITE_ZEROES, 'write zeroes'],
  [NBD_FLAG.SEND_FAST_ZERO, 'fast zero'],
  [NBD_FLAG.SEND_CACHE, 'cache'],
  [NBD_FLAG.SEND_DF, 'DF'],
  [NBD_FLAG.CAN_MULTI_CONN, 'multi-conn']
] as const

/** Returns what changed, or undefined when the new connection may carry on where the old left. */
export function checkReconnectedExport (before: ExportInfo, after: ExportInfo): string | undefined {
  // With tls: 'on' the first connection decides: a session that was authenticated and private
  // never goes on in clear (a man in the middle only has to refuse STARTTLS), and one that
  // began in clear is not silently taken over by a TLS server we never saw (and info.tls,
  // read from the first connection, stays true of every later one).
  if (after.tls !== before.tls) return before.tls ? 'the first connection used TLS, this one does not' : 'the first connection was without TLS, this one uses it'
  if (after.size !== before.size) return `size changed from ${before.size} to ${after.size} bytes`
  if ((before.flags & NBD_FLAG.READ_ONLY) === 0 && (after.flags & NBD_FLAG.READ_ONLY) !== 0) {
    return 'the export became read-only'
  }
  for (const [flag, name] of KEPT_FLAGS) {
    if ((before.flags & flag) !== 0 && (after.flags & flag) === 0) return `${name} is no longer offered`
  }
  if (after.mode !== before.mode) return `replies changed from ${before.mode} to ${after.mode}`
  const minBefore = before.blockSize?.minimum ?? 1
  const minAfter = after.blockSize?.minimum ?? 1
  // Our requests are aligned to the old minimum; a smaller (power-of-two) one divides it.
  if (minAfter > minBefore) return `minimum block size grew from ${minBefore} to ${minAfter}`
  const maxBefore = before.blockSize?.maximum ?? 0xffffffff
  const maxAfter = after.blockSize?.maximum ?? 0xffffffff
  if (maxAfter < Math.min(maxBefore, 32 * 1024 * 1024)) return `maximum payload shrank from ${maxBefore} to ${maxAfter}`
  const contextsBefore = [...before.contexts.values()].sort().join(',')
  const contextsAfter = [...after.contexts.values()].sort().join(',')
  if (contextsAfter !== contextsBefore) return `meta contexts changed from [${contextsBefore}] to [${contextsAfter}]`
  return undefined
}
