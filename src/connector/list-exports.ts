/**
 * Lists a server's exports with what each offers, the way `nbdinfo --list` does: NBD_OPT_LIST,
 * then NBD_OPT_INFO and NBD_OPT_LIST_META_CONTEXT per export, then NBD_OPT_ABORT. Nothing
 * enters transmission. It runs on the same handshake driver as establish (withHandshake,
 * openHandshake: STARTTLS first) and checks what INFO says the same way (exportInfo).
 */
import { HandshakeError } from '../errors.ts'
import { NBD_OPT } from '../protocol/constants.ts'
import type { ReplyMode } from '../protocol/reply.ts'
import type { OpenSocket } from '../transport/open-socket.ts'
import { withHandshake } from './connection.ts'
import type { ExportInfo } from './export-info.ts'
import { afterTls, exportInfo, openHandshake, type NegotiateTls } from './handshake/negotiate.ts'
import { optAbort } from './handshake/opt-abort.ts'
import { optInfoOrGo } from './handshake/opt-go.ts'
import { optList } from './handshake/opt-list.ts'
import { optListMetaContext } from './handshake/opt-meta-context.ts'
import { optStructuredReply } from './handshake/opt-structured-reply.ts'
import type { OptionChannel } from './handshake/option-channel.ts'

export interface ListExportsOptions {
  readonly open: OpenSocket
  readonly handshakeTimeout: number
  readonly signal?: AbortSignal
  readonly tls?: NegotiateTls | undefined
}

export interface ListedExport {
  readonly name: string
  readonly description: string
  /** What NBD_OPT_INFO said; undefined when the server refused INFO for this export. */
  readonly info: ExportInfo | undefined
  /** Why INFO failed, if it did. */
  readonly error: string | undefined
}

export async function listExports (options: ListExportsOptions): Promise<ListedExport[]> {
  return await withHandshake(options, options.signal, `listing exports took longer than ${options.handshakeTimeout} ms`, false, async (ch, deadline) => {
    const greeting = await openHandshake(ch, options.tls, deadline)
    if (!greeting.fixedNewstyle) throw new HandshakeError('the server is not fixed-newstyle, so it cannot list exports')
    return await afterTls(ch, options.tls, () => list(ch))
  })
}

async function list (ch: OptionChannel): Promise<ListedExport[]> {
  const mode: ReplyMode = await optStructuredReply(ch) ? 'structured' : 'simple'
  const listed: ListedExport[] = []
  for (const entry of await optList(ch)) {
    let info: ExportInfo | undefined
    let error: string | undefined
    try {
      const available = mode === 'structured' ? await optListMetaContext(ch, entry.name, []) : undefined
      const go = await optInfoOrGo(ch, NBD_OPT.INFO, entry.name)
      if (go === 'unsupported') {
        error = 'the server does not support NBD_OPT_INFO'
      } else {
        const description = go.description ?? (entry.description === '' ? undefined : entry.description)
        info = { ...exportInfo(entry.name, 'newstyle-fixed', mode, new Map(), { ...go, description }, ch.tls), availableContexts: available }
      }
    } catch (err) {
      if (!(err instanceof HandshakeError)) throw err
      error = err.message
    }
    listed.push({ name: entry.name, description: entry.description, info, error })
  }
  await optAbort(ch)
  return listed
}
