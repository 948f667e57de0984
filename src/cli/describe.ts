/**
 * Text and JSON renderings of what the server told us, shaped like nbdinfo's so people and
 * scripts that know nbdinfo find their way. What the server chose (names, descriptions,
 * contexts) has its control characters escaped in text (JSON escapes them itself): a
 * description cannot forge lines or drive the terminal.
 */
import type { ExportInfo } from '../client/export-info.ts'
import { FLAG_FEATURES } from '../protocol/export-flags.ts'
import { NBD_STATE_HOLE, NBD_STATE_ZERO } from '../protocol/constants.ts'
import { humanSize } from '../util/json.ts'
import { printable } from '../util/printable.ts'

export { humanSize, toJson } from '../util/json.ts'

export function protocolLine (info: ExportInfo): string {
  const packets = { simple: 'simple', structured: 'structured', extended: 'extended' }[info.mode]
  return `${info.protocol} ${info.tls ? 'with' : 'without'} TLS, using ${packets} packets`
}

export interface ExportReport {
  readonly 'export-name': string
  readonly description?: string
  readonly uri?: string
  readonly contexts: readonly string[]
  readonly [feature: string]: unknown
}

export function exportReport (info: ExportInfo, uri: string | undefined): ExportReport {
  const report: Record<string, unknown> = { 'export-name': info.exportName }
  if (info.canonicalName !== undefined && info.canonicalName !== info.exportName) report['canonical-name'] = info.canonicalName
  if (info.description !== undefined) report.description = info.description
  if (uri !== undefined) report.uri = uri
  report.contexts = info.availableContexts ?? [...info.contexts.values()]
  for (const [name, flag] of FLAG_FEATURES) report[name] = (info.flags & flag) !== 0
  if (info.blockSize !== undefined) {
    report.block_size_minimum = info.blockSize.minimum
    report.block_size_preferred = info.blockSize.preferred
    report.block_size_maximum = info.blockSize.maximum
  }
  report['export-size'] = info.sizeBigInt
  report['export-size-str'] = humanSize(info.sizeBigInt)
  return report as unknown as ExportReport
}

export function exportText (report: ExportReport): string {
  const lines = [`export="${printable(report['export-name'])}":`]
  if (report.description !== undefined) lines.push(`\tdescription: ${printable(report.description)}`)
  lines.push(`\texport-size: ${String(report['export-size'])} (${String(report['export-size-str'])})`)
  if (report.uri !== undefined) lines.push(`\turi: ${printable(report.uri)}`)
  if (report['canonical-name'] !== undefined) lines.push(`\tcanonical-name: ${printable(String(report['canonical-name']))}`)
  lines.push('\tcontexts:')
  for (const c of report.contexts) lines.push(`\t\t${printable(c)}`)
  for (const [name] of FLAG_FEATURES) lines.push(`\t${name}: ${String(report[name])}`)
  for (const key of ['block_size_minimum', 'block_size_preferred', 'block_size_maximum']) {
    if (report[key] !== undefined) lines.push(`\t${key}: ${String(report[key])}`)
  }
  return lines.join('\n')
}

/** What a status value means, per meta context (nbdinfo's descriptions). */
export function describeStatus (context: string, flags: number): string {
  if (context === 'base:allocation') {
    const parts: string[] = []
    if ((flags & NBD_STATE_HOLE) !== 0) parts.push('hole')
    if ((flags & NBD_STATE_ZERO) !== 0) parts.push('zero')
    return parts.length === 0 ? 'data' : parts.join(',')
  }
  if (context.startsWith('qemu:dirty-bitmap:')) return (flags & 1) !== 0 ? 'dirty' : 'clean'
  if (context === 'qemu:allocation-depth') {
    if (flags === 0) return 'absent'
    return flags === 1 ? 'local' : `backing depth ${flags}`
  }
  return ''
}
