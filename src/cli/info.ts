/**
 * `nbdts info URI`: what nbdinfo tells, from our own client, with nbdinfo's modes: the export
 * (default), `--list`, `--map[=CONTEXT] [--totals]`, `--size`, and the queries `--can X` /
 * `--is X`, which print nothing and exit 0 when true, 2 when false (1 on an error).
 */
import { NbdClient } from '../client/nbd-client.ts'
import type { ExportInfo } from '../client/export-info.ts'
import { InvalidArgumentError } from '../errors.ts'
import { formatNbdUri, parseNbdUri } from '../protocol/uri.ts'
import { printable } from '../util/printable.ts'
import { describeStatus, exportReport, exportText, protocolLine, toJson } from './describe.ts'
import { givenTls, type NbdClientOptions } from '../client/options.ts'
import type { TlsFlags } from './tls-options.ts'
import { UsageError } from './usage.ts'
import type { OpenSocket } from '../transport/open-socket.ts'

export interface InfoOptions extends TlsFlags {
  readonly json?: boolean
  readonly list?: boolean
  /** --map: true for base:allocation, or the context --map=CONTEXT names. */
  readonly map?: boolean | string
  /** The older spelling of --map=CONTEXT. */
  readonly context?: string
  readonly totals?: boolean
  readonly size?: boolean
  /** --can or --is: the property to test (nbdinfo's names). */
  readonly query?: string
  readonly openTimeout?: number
  /** The opener of a server run as a child (`[ CMD ... ]`). */
  readonly open?: OpenSocket
}

export interface Output {
  readonly out: (text: string) => void
}

/** nbdinfo's --can and --is properties: each read from a connected client. */
const QUERIES: Readonly<Record<string, (client: NbdClient) => boolean>> = {
  cache: (c) => c.canCache,
  connect: () => true,
  df: (c) => c.canDf,
  'fast-zero': (c) => c.canFastZero,
  flush: (c) => c.canFlush,
  fua: (c) => c.canFua,
  'multi-conn': (c) => c.canMultiConn,
  read: () => true,
  'structured-reply': (c) => c.info.mode !== 'simple',
  trim: (c) => c.canTrim,
  write: (c) => !c.isReadOnly,
  zero: (c) => c.canZero,
  'read-only': (c) => c.isReadOnly,
  rotational: (c) => c.isRotational,
  tls: (c) => c.info.tls
}

export const QUERY_NAMES = Object.keys(QUERIES)

/** The process's exit code: 0, or 2 for a --can/--is that is false. */
export async function runInfo (uri: string, options: InfoOptions, io: Output): Promise<number> {
  const modes = [options.list === true && '--list', options.map !== undefined && options.map !== false && '--map', options.size === true && '--size', options.query !== undefined && '--can/--is'].filter((m) => m !== false)
  if (modes.length > 1) throw new UsageError(`${modes.join(' and ')} cannot be used together`)
  if (options.totals === true && modes[0] !== '--map') throw new UsageError('--totals goes with --map')
  // As nbdinfo: an unknown property is an error (1), not "false" (2).
  const query = options.query === undefined ? undefined : QUERIES[options.query]
  if (options.query !== undefined && query === undefined) throw new InvalidArgumentError(`unknown --can or --is property "${printable(options.query)}" (one of: ${QUERY_NAMES.join(', ')})`)
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
      return 0
    }
    if (first !== undefined) io.out(`protocol: ${protocolLine(first)}`)
    for (const r of reports) io.out('error' in r ? `export="${printable(r['export-name'])}": ${printable(String(r.error))}` : exportText(r))
    return 0
  }

  const map = options.map === undefined || options.map === false ? undefined : typeof options.map === 'string' && options.map !== '' ? options.map : options.context ?? 'base:allocation'
  const client = await NbdClient.connect(uri, {
    ...connectOptions,
    // Contexts matter only to the full report and the map: the others ask for none.
    listContexts: map === undefined && options.size !== true && query === undefined,
    metaContexts: map === undefined ? [options.context ?? 'base:allocation'] : [map]
  })
  try {
    if (query !== undefined) return query(client) ? 0 : 2
    if (options.size === true) {
      io.out(String(client.sizeBigInt))
      return 0
    }
    if (map !== undefined) {
      if (options.totals === true) {
        printTotals(client, map, await totals(client, map), options.json === true, io)
        return 0
      }
      const extents = []
      for await (const e of client.map(undefined, 0, { context: map, bigint: true })) {
        const entry = { offset: e.offset, length: e.length, type: e.flags, description: describeStatus(map, e.flags) }
        if (options.json === true) extents.push(entry)
        else io.out(`${String(e.offset).padStart(12)}  ${String(e.length).padStart(12)}  ${String(e.flags).padStart(3)}  ${entry.description}`)
      }
      if (options.json === true) io.out(toJson(extents))
      return 0
    }
    const report = exportReport(client.info, formatNbdUri(parsed.address, client.exportName, client.info.tls))
    if (options.json === true) io.out(toJson({ ...protocolJson(client.info), exports: [report] }))
    else io.out(`protocol: ${protocolLine(client.info)}\n${exportText(report)}`)
    return 0
  } finally {
    await client.close()
  }
}

/** Bytes per status value over the whole export, in ascending order of the value. */
async function totals (client: NbdClient, context: string): Promise<Map<number, bigint>> {
  const sums = new Map<number, bigint>()
  for await (const e of client.map(undefined, 0, { context, bigint: true })) sums.set(e.flags, (sums.get(e.flags) ?? 0n) + BigInt(e.length))
  return new Map([...sums].sort(([a], [b]) => a - b))
}

/** nbdinfo --map --totals: size, percent of the export, type, description. */
function printTotals (client: NbdClient, context: string, sums: Map<number, bigint>, json: boolean, io: Output): void {
  const size = client.sizeBigInt
  const rows = [...sums].map(([type, bytes]) => ({
    size: bytes,
    percent: size === 0n ? 0 : 100 * Number(bytes) / Number(size),
    type,
    description: describeStatus(context, type)
  }))
  if (json) io.out(toJson(rows))
  else for (const r of rows) io.out(`${String(r.size).padStart(10)} ${oneDecimal(r.percent).padStart(5)}% ${String(r.type).padStart(3)} ${r.description}`)
}

/** printf's %.1f: a tie goes to the even digit (6.25 is 6.2), where toFixed would round it up. */
function oneDecimal (x: number): string {
  const tenths = x * 10
  const tie = Number.isInteger(tenths * 2) && !Number.isInteger(tenths)
  const rounded = tie ? 2 * Math.round(tenths / 2) : Math.round(tenths)
  return (rounded / 10).toFixed(1)
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
