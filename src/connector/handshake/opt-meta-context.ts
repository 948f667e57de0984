/**
 * NBD_OPT_SET_META_CONTEXT and NBD_OPT_LIST_META_CONTEXT: which block-status contexts exist
 * (base:allocation, qemu:dirty-bitmap:NAME, qemu:allocation-depth...) and which we select.
 */
import { ProtocolError } from '../../errors.ts'
import { NBD_OPT } from '../../protocol/constants.ts'
import { encodeMetaContextRequest, parseMetaContextReply } from '../../protocol/meta-context.ts'
import type { OptionChannel } from './option-channel.ts'

/**
 * Selects contexts for `exportName`. Returns id → name for what the server selected; an empty
 * map when it selected nothing or failed (a failed SET still replaces the selection, with
 * nothing). IDs are per connection and are never cached across connections.
 */
export async function optSetMetaContext (ch: OptionChannel, exportName: string, queries: readonly string[]): Promise<Map<number, string>> {
  const selected = new Map<number, string>()
  const err = await ch.exchange(NBD_OPT.SET_META_CONTEXT, encodeMetaContextRequest(exportName, queries), (_type, payload) => {
    const { id, name } = parseMetaContextReply(payload, false)
    const known = selected.get(id)
    if (known !== undefined && known !== name) {
      throw new ProtocolError(`server gave meta context id ${id} to both "${known}" and "${name}"`)
    }
    // The same id and name twice is a known nbdkit 1.32 quirk: keep one.
    selected.set(id, name)
  })
  return err === undefined ? selected : new Map()
}

/** Lists the contexts the server offers for `exportName` (all of them with no queries). */
export async function optListMetaContext (ch: OptionChannel, exportName: string, queries: readonly string[]): Promise<string[]> {
  // A Set: one lookup per reply, whatever the server repeats (the replies are capped anyway).
  const names = new Set<string>()
  const err = await ch.exchange(NBD_OPT.LIST_META_CONTEXT, encodeMetaContextRequest(exportName, queries), (_type, payload) => {
    // The id in LIST replies is reserved and ignored.
    names.add(parseMetaContextReply(payload, true).name)
  })
  // A list that ends in an error is discarded.
  return err === undefined ? [...names] : []
}
