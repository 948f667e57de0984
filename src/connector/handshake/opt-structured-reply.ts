/** NBD_OPT_STRUCTURED_REPLY: chunked replies, needed for holes, block status and DF. */
import { NBD_OPT } from '../../protocol/constants.ts'
import { unexpectedReply, type OptionChannel } from './option-channel.ts'

/** True when the server acked; any error means simple replies only. */
export async function optStructuredReply (ch: OptionChannel): Promise<boolean> {
  const err = await ch.exchange(NBD_OPT.STRUCTURED_REPLY, undefined, unexpectedReply(NBD_OPT.STRUCTURED_REPLY))
  return err === undefined
}
