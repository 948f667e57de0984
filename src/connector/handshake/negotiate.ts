/**
 * The whole handshake, in QEMU's order: greeting, STARTTLS, EXTENDED_HEADERS or else
 * STRUCTURED_REPLY, SET_META_CONTEXT, then GO, falling back to EXPORT_NAME for servers that
 * do not know GO. A non-fixed-newstyle server only gets EXPORT_NAME (and no TLS).
 *
 *   greeting ──► [fixed?] ──no──► EXPORT_NAME ──► transmission (simple replies)
 *                   │yes              (TLS required: refused here)
 *                   ▼
 *              [tls on|require] STARTTLS ──► everything below runs over TLS (see opt-starttls)
 *                   ▼
 *             EXTENDED_HEADERS ──ack──► mode=extended ─┐
 *                   │err                               │
 *             STRUCTURED_REPLY ──ack──► mode=structured┤
 *                   │err                               │
 *               mode=simple ───────────────────────────┤
 *                                                      ▼
 *                              SET_META_CONTEXT (not in simple mode)
 *                                                      ▼
 *                                GO ──ack──► transmission
 *                                 │ERR_UNSUP
 *                                 ▼
 *                            EXPORT_NAME ──► transmission
 */
import { ConnectionError, ProtocolError, TlsError } from '../../errors.ts'
import { NBD_OPT } from '../../protocol/constants.ts'
import { usableTransmissionFlags } from '../../protocol/export-flags.ts'
import type { ReplyMode } from '../../protocol/reply.ts'
import type { ExportInfo } from '../export-info.ts'
import { greet } from './greeting.ts'
import { optExportName } from './opt-export-name.ts'
import { optExtendedHeaders } from './opt-extended-headers.ts'
import { optInfoOrGo } from './opt-go.ts'
import { optListMetaContext, optSetMetaContext } from './opt-meta-context.ts'
import { optStartTls } from './opt-starttls.ts'
import { optStructuredReply } from './opt-structured-reply.ts'
import type { OptionChannel } from './option-channel.ts'
import type { TlsCredentials, TlsMode } from '../../transport/tls-credentials.ts'

export interface NegotiateTls {
  readonly mode: Exclude<TlsMode, 'off'>
  readonly credentials: TlsCredentials
}

export interface NegotiateOptions {
  readonly exportName: string
  /** Ask for structured replies (default true). */
  readonly structuredReplies: boolean
  /** Ask for extended headers (default true). */
  readonly extendedHeaders: boolean
  /** Meta contexts to select for block status (default ['base:allocation']). */
  readonly metaContexts: readonly string[]
  /** Also ask which meta contexts the export offers (for `nbdts info`). */
  readonly listContexts?: boolean
  /** TLS to try or insist on; undefined: plaintext. */
  readonly tls?: NegotiateTls | undefined
}

/** What the greeting said, which the options that follow depend on. */
export interface Greeting {
  readonly fixedNewstyle: boolean
  readonly noZeroes: boolean
}

/** The export's handshake, whole: the opening (greeting, STARTTLS), then its options. */
export async function negotiate (ch: OptionChannel, options: NegotiateOptions, signal: AbortSignal): Promise<ExportInfo> {
  const greeting = await openHandshake(ch, options.tls, signal)
  return await afterTls(ch, options.tls, () => negotiateOptions(ch, options, greeting))
}

/**
 * What every handshake starts with, whatever it is for (an export, a list): the greeting,
 * then STARTTLS when TLS is asked for, so that nothing else is ever sent in clear.
 */
export async function openHandshake (ch: OptionChannel, tls: NegotiateTls | undefined, signal: AbortSignal): Promise<Greeting> {
  const greeting = await greet(ch)
  if (tls !== undefined && greeting.fixedNewstyle) {
    await optStartTls(ch, tls.mode, tls.credentials, signal)
  } else if (tls?.mode === 'require') {
    throw new TlsError('TLS is required, but the server is not fixed-newstyle, so it cannot do STARTTLS')
  }
  return greeting
}

/**
 * Runs the options after STARTTLS. Under TLS 1.3 a server that rejects our certificate (or
 * wants one we did not send) only says so after the handshake, by closing: the first reply
 * never comes. That is a TLS failure.
 */
export async function afterTls<T> (ch: OptionChannel, tls: NegotiateTls | undefined, run: () => Promise<T>): Promise<T> {
  if (!ch.tls) return await run()
  const before = ch.reader.bytesRead
  try {
    return await run()
  } catch (err) {
    if (err instanceof ConnectionError && ch.reader.bytesRead === before) {
      throw new TlsError(`the server closed the TLS connection before answering anything: it probably refused our client certificate (or the lack of one) (${tls!.credentials.description})`, { cause: err })
    }
    throw err
  }
}

async function negotiateOptions (ch: OptionChannel, options: NegotiateOptions, handshake: Greeting): Promise<ExportInfo> {
  const { exportName } = options
  if (!handshake.fixedNewstyle) {
    const reply = await optExportName(ch, exportName, handshake.noZeroes)
    return exportInfo(options.exportName, 'newstyle', 'simple', new Map(), {
      size: reply.size, flags: reply.flags, canonicalName: undefined, description: undefined, blockSize: undefined
    })
  }

  let mode: ReplyMode = 'simple'
  if (options.structuredReplies && options.extendedHeaders && await optExtendedHeaders(ch)) mode = 'extended'
  else if (options.structuredReplies && await optStructuredReply(ch)) mode = 'structured'

  const available = mode !== 'simple' && options.listContexts === true
    ? await optListMetaContext(ch, exportName, [])
    : undefined
  const contexts = mode !== 'simple' && options.metaContexts.length > 0
    ? await optSetMetaContext(ch, exportName, options.metaContexts)
    : new Map<number, string>()

  const go = await optInfoOrGo(ch, NBD_OPT.GO, exportName)
  if (go !== 'unsupported') return { ...exportInfo(exportName, 'newstyle-fixed', mode, contexts, go, ch.tls), availableContexts: available }

  if (mode === 'extended') {
    // A server that acked extended headers MUST support GO; EXPORT_NAME is then forbidden.
    throw new ProtocolError('server acked NBD_OPT_EXTENDED_HEADERS but does not support NBD_OPT_GO')
  }
  const reply = await optExportName(ch, exportName, handshake.noZeroes)
  return {
    ...exportInfo(exportName, 'newstyle-fixed', mode, contexts, {
      size: reply.size, flags: reply.flags, canonicalName: undefined, description: undefined, blockSize: undefined
    }, ch.tls),
    availableContexts: available
  }
}

/** What the handshake learnt, checked: every export, opened or listed, goes through here. */
export function exportInfo (
  exportName: string,
  protocol: ExportInfo['protocol'],
  mode: ReplyMode,
  contexts: Map<number, string>,
  go: { size: bigint, flags: number, canonicalName: string | undefined, description: string | undefined, blockSize: ExportInfo['blockSize'] },
  tls = false
): ExportInfo {
  if (go.size > 0x7fff_ffff_ffff_ffffn) {
    // Offsets are signed 64-bit on most servers; libnbd's CVE-2023-5215 came from trusting this.
    throw new ProtocolError(`export size ${go.size} is above 2^63 - 1`)
  }
  return {
    exportName,
    canonicalName: go.canonicalName,
    description: go.description,
    size: go.size,
    flags: usableTransmissionFlags(go.flags, mode),
    serverFlags: go.flags,
    blockSize: go.blockSize,
    mode,
    protocol,
    tls,
    contexts,
    availableContexts: undefined
  }
}
