/**
 * Lists a server's exports with what each offers, the way `nbdinfo --list` does: NBD_OPT_LIST,
 * then NBD_OPT_INFO and NBD_OPT_LIST_META_CONTEXT per export, then NBD_OPT_ABORT. Nothing
 * enters transmission.
 */
import { HandshakeError } from '../errors.ts'
import { NBD_OPT } from '../protocol/constants.ts'
import { usableTransmissionFlags } from '../protocol/export-flags.ts'
import type { ReplyMode } from '../protocol/reply.ts'
import { SocketReader } from '../transport/socket-reader.ts'
import type { OpenSocket } from '../transport/open-socket.ts'
import { linkedSignal } from '../util/abort.ts'
import { TimeoutError } from '../errors.ts'
import type { ExportInfo } from './export-info.ts'
import { greet } from './handshake/greeting.ts'
import { optAbort } from './handshake/opt-abort.ts'
import { optInfoOrGo } from './handshake/opt-go.ts'
import { optList } from './handshake/opt-list.ts'
import { optListMetaContext } from './handshake/opt-meta-context.ts'
import type { NegotiateTls } from './handshake/negotiate.ts'
import { optStartTls } from './handshake/opt-starttls.ts'
import { optStructuredReply } from './handshake/opt-structured-reply.ts'
import { OptionChannel } from './handshake/option-channel.ts'

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
  const deadline = linkedSignal([options.signal], options.handshakeTimeout,
    () => new TimeoutError(`listing exports took longer than ${options.handshakeTimeout} ms`))
  const socket = await options.open(deadline.signal)
  const ch = new OptionChannel(socket, new SocketReader(socket))
  const onAbort = (): void => {
    const reason: unknown = deadline.signal.reason
    ch.reader.fail(reason instanceof Error ? reason : new TimeoutError('aborted'))
    socket.destroy()
  }
  deadline.signal.addEventListener('abort', onAbort, { once: true })
  try {
    const handshake = await greet(ch)
    if (!handshake.fixedNewstyle) throw new HandshakeError('the server is not fixed-newstyle, so it cannot list exports')
    // Before TLS a server may hide TLS-only exports, and what it says is not to be trusted.
    if (options.tls !== undefined) await optStartTls(ch, options.tls.mode, options.tls.credentials, deadline.signal)
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
          info = {
            exportName: entry.name,
            canonicalName: go.canonicalName,
            description: go.description ?? (entry.description === '' ? undefined : entry.description),
            size: go.size,
            flags: usableTransmissionFlags(go.flags, mode),
            serverFlags: go.flags,
            blockSize: go.blockSize,
            mode,
            protocol: 'newstyle-fixed',
            tls: ch.tls,
            contexts: new Map(),
            availableContexts: available
          }
        }
      } catch (err) {
        if (!(err instanceof HandshakeError)) throw err
        error = err.message
      }
      listed.push({ name: entry.name, description: entry.description, info, error })
    }
    await optAbort(ch)
    return listed
  } finally {
    deadline.signal.removeEventListener('abort', onAbort)
    deadline.dispose()
    socket.destroy()
  }
}
