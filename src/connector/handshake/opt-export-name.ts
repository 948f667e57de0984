/**
 * NBD_OPT_EXPORT_NAME: the fallback for servers without NBD_OPT_GO, and the only option a
 * non-fixed newstyle server knows. There is no reply header and no way to report an error:
 * a server that refuses the export closes the connection.
 */
import { ConnectionError, HandshakeError } from '../../errors.ts'
import { NBD_EXPORT_NAME_REPLY, NBD_EXPORT_NAME_ZEROES } from '../../protocol/constants.ts'
import { encodeExportNameRequest, parseExportNameReply, type ExportNameReply } from '../../protocol/export-name.ts'
import type { OptionChannel } from './option-channel.ts'

export async function optExportName (ch: OptionChannel, exportName: string, noZeroes: boolean): Promise<ExportNameReply> {
  ch.send(encodeExportNameRequest(exportName))
  const length = NBD_EXPORT_NAME_REPLY + (noZeroes ? 0 : NBD_EXPORT_NAME_ZEROES)
  let reply: Buffer
  try {
    reply = await ch.read(length, 'NBD_OPT_EXPORT_NAME reply')
  } catch (err) {
    if (err instanceof ConnectionError) {
      throw new HandshakeError(`the server closed the connection instead of opening export "${exportName}" (NBD_OPT_EXPORT_NAME cannot report why; the export probably does not exist)`, { option: 'NBD_OPT_EXPORT_NAME', cause: err })
    }
    throw err
  }
  return parseExportNameReply(reply)
}
