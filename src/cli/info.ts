/**
 * `nbdts info URI [--json] [--list] [--map [--context NAME]]`: what nbdinfo tells, from our
 * own client.
 */
import { NbdClient } from '../client/nbd-client.ts'
import type { ExportInfo } from '../connector/export-info.ts'
import { formatNbdUri, parseNbdUri } from '../protocol/uri.ts'
import { printable } from '../util/printable.ts'
import { describeStatus, exportReport, exportText, protocolLine, toJson } from './describe.ts'
import { givenTls, type NbdClientOptions } from '../client/options.ts'
import type { TlsFlags } from './tls-options.ts'
import type { OpenSocket } from '../transport/open-socket.ts'

export interface InfoOptions extends TlsFlags {
  readonly json?: boolean
  readonly list?: boolean
  readonly map?: boolean
  readonly context?: string
  readonly openTimeout?: number
  /** The opener of a server run as a child (`[ CMD ... ]`). */
  readonly open?: OpenSocket
}

export interface Output {
  readonly out: (text: string) => void
}

export async function runInfo (uri: string, options: InfoOptions, io: Output): Promise<void> {
  const parsed = parseNbdUri(uri)
  const connectOptions = {
    ...tlsClientOptions(options),
    ...(options.openTimeout !== undefined && { openTimeout: options.openTimeout }),
    ...(options.open !== undefined && { open: options.open })
  }
  if (options.list === true) {
    const exports = await NbdClient.list(uri, connectOptions)
    const reports = exports.map((e) => e.info === undefined
      ? { 'export-name': e.name, description: e.description, error: e.error }
      : exportReport(e.info, formatNbdUri(parsed.address, e.name, e.info.tls)))
    const first = exports.find((e) => e.info !== undefined)?.info
    if (options.json === true) {
      io.out(toJson({ ...protocolJson(first), exports: reports }))
      return
    }
    if (first !== undefined) io.out(`protocol: ${protocolLine(first)}`)
    for (const r of reports) io.out('error' in r ? `export="${printable(r['export-name'])}": ${printable(String(r.error))}` : exportText(r))
    return
  }

  const context = options.context ?? 'base:allocation'
  const client = await NbdClient.connect(uri, {
    ...connectOptions,
    listContexts: options.map !== true,
    metaContexts: [context]
  })
  try {
    if (options.map === true) {
      const extents = []
      for await (const e of client.map(0, undefined, { context, bigint: true })) {
        const entry = { offset: e.offset, length: e.length, type: e.flags, description: describeStatus(context, e.flags) }
        if (options.json === true) extents.push(entry)
        else io.out(`${String(e.offset).padStart(12)}  ${String(e.length).padStart(12)}  ${String(e.flags).padStart(3)}  ${entry.description}`)
      }
      if (options.json === true) io.out(toJson(extents))
      return
    }
    const report = exportReport(client.info, formatNbdUri(parsed.address, client.exportName, client.info.tls))
    if (options.json === true) io.out(toJson({ ...protocolJson(client.info), exports: [report] }))
    else io.out(`protocol: ${protocolLine(client.info)}\n${exportText(report)}`)
  } finally {
    await client.close()
  }
}

function protocolJson (info: ExportInfo | undefined): Record<string, unknown> {
  if (info === undefined) return {}
  return { protocol: info.protocol, TLS: info.tls, structured: info.mode !== 'simple', extended: info.mode === 'extended' }
}

/**
 * The TLS flags as client options, leaving out what was not given (the URI then decides). The
 * URI on our command line was typed by our user, so it may name local files (allowLocalFile).
 */
export function tlsClientOptions (flags: TlsFlags): TlsFlags & Pick<NbdClientOptions, 'allowLocalFile'> {
  return { allowLocalFile: true, ...givenTls(flags) }
}
