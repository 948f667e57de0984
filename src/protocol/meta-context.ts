/**
 * NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT (spec §"Metadata querying").
 *
 *   C: 4 export name length | name | 4 query count | count × (4 length | query)
 *   S: NBD_REP_META_CONTEXT: 4 context id | context name
 */
import { ProtocolError } from '../errors.ts'
import { decodeString, encodeString } from './strings.ts'

export function encodeMetaContextRequest (exportName: string, queries: readonly string[]): Buffer {
  const name = encodeString(exportName, 'export name')
  const encoded = queries.map((q) => encodeString(q, 'meta context query'))
  const out = Buffer.allocUnsafe(4 + name.length + 4 + encoded.reduce((n, q) => n + 4 + q.length, 0))
  let at = out.writeUInt32BE(name.length, 0)
  out.set(name, at)
  at += name.length
  at = out.writeUInt32BE(encoded.length, at)
  for (const q of encoded) {
    at = out.writeUInt32BE(q.length, at)
    out.set(q, at)
    at += q.length
  }
  return out
}

export interface MetaContextReply {
  readonly id: number
  readonly name: string
}

/**
 * Parses a META_CONTEXT reply. Names are `namespace:leaf`; the namespace is non-empty and has
 * no whitespace. An empty leaf is a wildcard, which only LIST may return.
 */
export function parseMetaContextReply (payload: Buffer, allowWildcard: boolean): MetaContextReply {
  if (payload.length < 5) throw new ProtocolError(`NBD_REP_META_CONTEXT of ${payload.length} bytes is too short`)
  const id = payload.readUInt32BE(0)
  const name = decodeString(payload.subarray(4), 'meta context name')
  const colon = name.indexOf(':')
  if (colon <= 0 || /\s/.test(name.slice(0, colon))) {
    throw new ProtocolError(`meta context name "${name}" is not of the form namespace:leaf`)
  }
  if (!allowWildcard && colon === name.length - 1) {
    throw new ProtocolError(`server selected the wildcard meta context "${name}"`)
  }
  return { id, name }
}
