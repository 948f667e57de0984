/**
 * NBD_OPT_EXTENDED_HEADERS: 32-byte request and reply headers with 64-bit lengths. It implies
 * structured replies and is tried first, as QEMU does; ERR_UNSUP means compact headers.
 */
import { NBD_OPT } from '../../protocol/constants.ts'
import { unexpectedReply, type OptionChannel } from './option-channel.ts'

export async function optExtendedHeaders (ch: OptionChannel): Promise<boolean> {
  const err = await ch.exchange(NBD_OPT.EXTENDED_HEADERS, undefined, unexpectedReply(NBD_OPT.EXTENDED_HEADERS))
  return err === undefined
}
