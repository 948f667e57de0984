/** NBD_OPT_LIST: the exports a server offers (it MAY hide TLS-only ones before TLS). */
import { NBD_OPT, NBD_REP } from '../../protocol/constants.ts'
import { parseServerReply, type ExportListing } from '../../protocol/list.ts'
import { refused, type OptionChannel } from './option-channel.ts'

export async function optList (ch: OptionChannel): Promise<ExportListing[]> {
  const exports: ExportListing[] = []
  const err = await ch.exchange(NBD_OPT.LIST, undefined, (_type, payload) => {
    exports.push(parseServerReply(payload))
  })
  if (err !== undefined) {
    const why = err.type === NBD_REP.ERR_POLICY ? 'the server does not allow listing its exports' : 'the server refused to list its exports'
    throw refused(NBD_OPT.LIST, err, why)
  }
  return exports
}
