/**
 * NBD_OPT_LIST replies (spec §"NBD_REP_SERVER").
 *
 *   S: NBD_REP_SERVER: 4 name length | name | description (the rest, may be empty)
 */
import { ProtocolError } from '../errors.ts'
import { decodeString } from './strings.ts'

export interface ExportListing {
  readonly name: string
  readonly description: string
}

export function parseServerReply (payload: Buffer): ExportListing {
  if (payload.length < 4) throw new ProtocolError(`NBD_REP_SERVER of ${payload.length} bytes is too short`)
  const nameLength = payload.readUInt32BE(0)
  if (nameLength > payload.length - 4) {
    throw new ProtocolError(`NBD_REP_SERVER name length ${nameLength} runs past its ${payload.length}-byte reply`)
  }
  return {
    name: decodeString(payload.subarray(4, 4 + nameLength), 'export name in NBD_REP_SERVER'),
    description: decodeString(payload.subarray(4 + nameLength), 'export description in NBD_REP_SERVER')
  }
}
