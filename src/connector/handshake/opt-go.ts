/**
 * NBD_OPT_GO (ends the handshake) and NBD_OPT_INFO (the same question without committing).
 * We always ask for NBD_INFO_BLOCK_SIZE, and so MUST obey what comes back; also the canonical
 * name and the description. Replies may come in any order (qemu sends NBD_INFO_EXPORT last),
 * may include info we did not ask for, and unknown info types are ignored.
 */
import { ProtocolError } from '../../errors.ts'
import { NBD_INFO, NBD_OPT, NBD_REP } from '../../protocol/constants.ts'
import { encodeInfoRequest, parseInfoReply, type BlockSizeConstraints } from '../../protocol/info.ts'
import { optionName } from '../../protocol/names.ts'
import { refused, type OptionChannel } from './option-channel.ts'

export interface GoResult {
  readonly size: bigint
  readonly flags: number
  readonly canonicalName: string | undefined
  readonly description: string | undefined
  readonly blockSize: BlockSizeConstraints | undefined
}

const REQUESTS = [NBD_INFO.BLOCK_SIZE, NBD_INFO.NAME, NBD_INFO.DESCRIPTION]

/**
 * Runs INFO or GO. Resolves 'unsupported' when the server does not know the option (an old
 * server: the caller falls back to NBD_OPT_EXPORT_NAME).
 */
export async function optInfoOrGo (ch: OptionChannel, option: typeof NBD_OPT.GO | typeof NBD_OPT.INFO, exportName: string): Promise<GoResult | 'unsupported'> {
  let exported: { size: bigint, flags: number } | undefined
  let canonicalName: string | undefined
  let description: string | undefined
  let blockSize: BlockSizeConstraints | undefined
  const err = await ch.exchange(option, encodeInfoRequest(exportName, REQUESTS), (_type, payload) => {
    const info = parseInfoReply(payload)
    switch (info.type) {
      case 'export':
        if (exported !== undefined && (exported.size !== info.size || exported.flags !== info.flags)) {
          throw new ProtocolError(`conflicting NBD_INFO_EXPORT replies to ${optionName(option)}`)
        }
        exported = { size: info.size, flags: info.flags }
        break
      case 'name': canonicalName = info.name; break
      case 'description': description = info.description; break
      case 'block-size': blockSize = info.blockSize; break
      case 'unknown': break
    }
  })
  if (err !== undefined) {
    const quoted = `"${exportName}"`
    switch (err.type) {
      case NBD_REP.ERR_UNSUP: return 'unsupported'
      case NBD_REP.ERR_UNKNOWN: throw refused(option, err, `the server has no export named ${quoted}`)
      case NBD_REP.ERR_TLS_REQD: throw refused(option, err, `export ${quoted} requires TLS`)
      case NBD_REP.ERR_POLICY: throw refused(option, err, `the server's policy forbids export ${quoted}`)
      case NBD_REP.ERR_BLOCK_SIZE_REQD: throw refused(option, err, 'the server insists on block size negotiation')
      default: throw refused(option, err, `the server refused export ${quoted}`)
    }
  }
  if (exported === undefined) {
    throw new ProtocolError(`${optionName(option)} succeeded without NBD_INFO_EXPORT`)
  }
  return { ...exported, canonicalName, description, blockSize }
}
