/**
 * The results, three ways: a console table (medians, min–max, ours ÷ each peer), JSON for
 * tools, and an SVG chart for people: per row, each contender's median as a bar relative to
 * the best in that row, with the figure written on it.
 */
import type { Contender } from './contenders.ts'
import type { Row, SuiteName } from './rows.ts'
import { format, median } from './stats.ts'

export interface RowResult {
  readonly row: Row
  /** Contender name → one value per run. */
  readonly samples: Record<string, number[]>
  /** Peak RSS of our process over the runs of this row, MiB. */
  rssMiB?: number
}

export interface SuiteResult {
  readonly name: SuiteName
  readonly contenders: readonly Contender[]
  readonly rows: RowResult[]
  /** Peak RSS of our mount daemons, MiB. */
  readonly mountRssMiB: Record<string, number>
}

const ratio = (ours: number[] | undefined, peer: number[] | undefined): number | undefined =>
  ours === undefined || peer === undefined ? undefined : median(ours) / median(peer)

export function table (suite: SuiteResult): string {
  const ours = suite.contenders.filter((c) => c.ours)
  const peers = suite.contenders.filter((c) => !c.ours)
  const pairs = ours.flatMap((o) => peers.map((p) => [o, p] as const))
  const withRss = suite.rows.some((r) => r.rssMiB !== undefined)
  const header = ['row', ...suite.contenders.map((c) => c.name), ...pairs.map(([o, p]) => `${o.name} ÷ ${p.name}`), ...(withRss ? ['nbdts RSS MiB'] : [])]
  const lines = suite.rows.map(({ row, samples, rssMiB }) => {
    const cell = (name: string): string => {
      const v = samples[name]
      if (v === undefined) return '–'
      return v.length === 1 ? format(v[0]!) : `${format(median(v))} (${format(Math.min(...v))}–${format(Math.max(...v))})`
    }
    return [`${row.label} [${row.unit}]`, ...suite.contenders.map((c) => cell(c.name)),
      ...pairs.map(([o, p]) => { const r = ratio(samples[o.name], samples[p.name]); return r === undefined ? '–' : `${r.toFixed(2)}×` }),
      ...(withRss ? [rssMiB === undefined ? '–' : rssMiB.toFixed(0)] : [])]
  })
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)))
  const print = (cells: readonly string[]): string => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |\n`
  let out = `\n${suite.name}\n${print(header)}${print(widths.map((w) => '-'.repeat(w)))}${lines.map(print).join('')}`
  for (const [name, rss] of Object.entries(suite.mountRssMiB)) out += `${name}: daemon peak RSS ${rss.toFixed(0)} MiB\n`
  for (const c of suite.contenders) if (c.note !== undefined) out += `  ${c.name}: ${c.note}\n`
  return out
}

export function toJson (suites: readonly SuiteResult[], meta: Record<string, unknown>): unknown {
  return {
    ...meta,
    suites: suites.map((s) => ({
      name: s.name,
      contenders: s.contenders.map((c) => ({ name: c.name, ours: c.ours, ...(c.note !== undefined ? { note: c.note } : {}) })),
      mountPeakRssMiB: s.mountRssMiB,
      rows: s.rows.map(({ row, samples, rssMiB }) => ({
        ...row,
        median: Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, median(v)])),
        samples,
        ...(rssMiB !== undefined ? { nbdtsPeakRssMiB: Math.round(rssMiB) } : {})
      }))
    }))
  }
}

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b']

/** One panel per suite; bars are medians relative to the row's best, so every row reads the same way. */
export function svg (suites: readonly SuiteResult[], title: string): string {
  const W = 1000
  const labelW = 330
  const barMax = W - labelW - 140
  const barH = 13
  const parts: string[] = []
  let y = 40
  parts.push(`<text x="10" y="24" font-size="16" font-weight="bold">${esc(title)}</text>`)
  for (const suite of suites) {
    y += 16
    parts.push(`<text x="10" y="${y}" font-size="14" font-weight="bold">${esc(suite.name)}</text>`)
    const legendY = y
    suite.contenders.forEach((c, i) => {
      const x = labelW + i * 160
      parts.push(`<rect x="${x}" y="${legendY - 10}" width="10" height="10" fill="${COLORS[i % COLORS.length]}"/><text x="${x + 14}" y="${legendY}" font-size="11">${esc(c.name)}</text>`)
    })
    y += 10
    for (const { row, samples } of suite.rows) {
      const present = suite.contenders.filter((c) => samples[c.name] !== undefined)
      const best = Math.max(...present.map((c) => median(samples[c.name]!)))
      parts.push(`<text x="10" y="${y + 4 + (present.length * (barH + 2)) / 2}" font-size="11">${esc(`${row.label} [${row.unit}]`)}</text>`)
      for (const c of present) {
        const v = median(samples[c.name]!)
        const w = Math.max(1, (v / best) * barMax)
        const color = COLORS[suite.contenders.indexOf(c) % COLORS.length]
        parts.push(`<rect x="${labelW}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${color}"/><text x="${labelW + w + 4}" y="${y + barH - 2}" font-size="10">${esc(format(v))}</text>`)
        y += barH + 2
      }
      y += 8
    }
  }
  const H = y + 10
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n${parts.join('\n')}\n</svg>\n`
}
