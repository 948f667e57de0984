/**
 * NBD_OPT_EXPORT_NAME (spec §"NBD_OPT_EXPORT_NAME"): the old way to end the handshake.
 *
 *   C: option data = export name (the whole data)
 *   S: (no reply header) 8 size | 2 transmission flags | 124 zeroes unless NO_ZEROES
 *
 * The server cannot report an error: it closes the connection instead.
 */
import { NBD_OPT } from './constants.ts'
import { encodeOptionRequest } from './option.ts'
import { encodeString } from './strings.ts'

export function encodeExportNameRequest (exportName: string): Buffer {
  return encodeOptionRequest(NBD_OPT.EXPORT_NAME, encodeString(exportName, 'export name'))
}

export interface ExportNameReply {
  readonly size: bigint
  readonly flags: number
}

export function parseExportNameReply (reply: Buffer): ExportNameReply {
  return { size: reply.readBigUInt64BE(0), flags: reply.readUInt16BE(8) }
}
