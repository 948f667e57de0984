/**
 * `nbdts ctl watch`: every mount of a daemon, redrawn each second, like `iostat -x 1` beside
 * `multipathd show paths`, with a sparkline of each mount's throughput over the last minute
 * (scaled to the highest rate on screen, so mounts compare). `q` (or Ctrl-C) quits.
 *
 * It asks `show mounts json` once a second over one connection (a lost one is reported on the
 * screen and made again); the sparklines' history is kept here, from those answers.
 */
import { ControlConnection } from '../control/client.ts'
import type { MountRow } from '../daemon/views.ts'
import { humanSize } from '../util/json.ts'
import { printable } from '../util/printable.ts'

/** A row of `show mounts json`, as much of it as the screen shows. */
type WatchRow = Omit<MountRow, 'uri' | 'origin'>

const HISTORY = 60
const BARS = '▁▂▃▄▅▆▇█'
const SHORT: Readonly<Record<string, string>> = { CONNECTED: 'ok', CONNECTING_WAIT: 'wait', CONNECTING_NOWAIT: 'nowait', QUIT: 'quit' }

/** One bar per sample, scaled to `max`; a blank for nothing at all. */
export function sparkline (samples: readonly number[], max: number): string {
  return samples.map((v) => v <= 0 || max <= 0 ? ' ' : BARS[Math.min(BARS.length - 1, Math.floor((v / max) * (BARS.length - 1) + 0.5))]!).join('')
}

function latency (ms: number | null): string {
  if (ms === null) return '-'
  return ms < 1 ? `${Math.round(ms * 1000)}us` : ms < 1000 ? `${ms.toFixed(1)}ms` : `${(ms / 1000).toFixed(2)}s`
}

/** The whole screen, as lines no wider than `width`. */
export function renderWatch (rows: readonly WatchRow[], history: ReadonlyMap<string, readonly number[]>, width: number, heading: string, problem?: string): string[] {
  const lines = [heading, problem === undefined ? '' : `! ${problem}`]
  const fileWidth = Math.min(40, Math.max(4, ...rows.map((r) => r.file.length)))
  const fixed = (cells: string[]): string =>
    [cells[0]!.padEnd(fileWidth), cells[1]!.padEnd(8), cells[2]!.padEnd(11), cells[3]!.padStart(6), cells[4]!.padStart(8), cells[5]!.padStart(9), cells[6]!.padStart(9), cells[7]!.padStart(6)].join(' ')
  const head = fixed(['FILE', 'STATE', 'CONN', 'SIZE', 'IOPS', 'MiB/s', 'P99', 'INFL'])
  const room = Math.max(0, Math.min(HISTORY, width - head.length - 2))
  lines.push(`${head}  ${'MiB/s, last minute'.slice(0, room)}`.slice(0, width))
  let max = 0
  for (const samples of history.values()) for (const v of samples) max = Math.max(max, v)
  for (const r of rows) {
    const file = r.file.length > fileWidth ? `…${r.file.slice(r.file.length - fileWidth + 1)}` : r.file
    const conn = r.connections.length === 0 ? '-' : r.connections.map((s) => SHORT[s] ?? s).join(',')
    const cells = [file, r.state, conn.slice(0, 11), r.size === null ? '-' : humanSize(r.size), r.iops.toFixed(0), r.mibps.toFixed(1), latency(r.p99ms), String(r.inFlight)]
    const samples = history.get(r.file) ?? []
    const spark = sparkline(samples.slice(-room), max).padStart(room)
    lines.push(printable(`${fixed(cells)}  ${spark}`).slice(0, width))
    if (r.paths !== undefined) lines.push(printable(`  paths: ${r.paths.join(' · ')}`).slice(0, width))
    if (r.error !== undefined) lines.push(printable(`  ${r.error}`).slice(0, width))
  }
  if (rows.length === 0) lines.push('(no mounts)')
  lines.push('', `peak ${max.toFixed(1)} MiB/s on screen · q quits`)
  return lines
}

export interface WatchOptions {
  readonly intervalMs?: number
  readonly input?: NodeJS.ReadStream
  readonly output?: NodeJS.WriteStream
}

export async function watch (socket: string, timeout: number, options: WatchOptions = {}): Promise<number> {
  const input = options.input ?? process.stdin
  const output = options.output ?? process.stdout
  const intervalMs = options.intervalMs ?? 1000
  const history = new Map<string, number[]>()
  let connection: ControlConnection | null = null
  let stop: () => void = () => {}
  const stopped = new Promise<void>((resolve) => { stop = resolve })
  const onKey = (data: Buffer | string): void => {
    const text = data.toString()
    if (text.includes('q') || text.includes('Q') || text.includes('\x03')) stop()
  }
  const raw = input.isTTY === true
  if (raw) input.setRawMode(true)
  input.on('data', onKey)
  input.on('end', () => { stop() })
  input.resume()
  // The alternate screen, cursor hidden: the shell's screen comes back as it was.
  output.write('\x1b[?1049h\x1b[?25l')
  let running = true
  void stopped.then(() => { running = false })
  try {
    while (running) {
      let rows: WatchRow[] = []
      let problem: string | undefined
      try {
        if (connection?.closed === true) connection = null
        connection ??= await ControlConnection.connect(socket, timeout)
        const reply = await connection.request('show mounts json', timeout)
        if (reply.ok) rows = JSON.parse(reply.text) as WatchRow[]
        else problem = reply.text
      } catch (err) {
        problem = (err as Error).message
        connection?.close()
        connection = null
      }
      for (const r of rows) {
        const samples = history.get(r.file) ?? []
        samples.push(r.mibps)
        if (samples.length > HISTORY) samples.shift()
        history.set(r.file, samples)
      }
      for (const file of [...history.keys()]) if (!rows.some((r) => r.file === file)) history.delete(file)
      const heading = `nbdts ctl watch  ${socket}  ${new Date().toLocaleTimeString()}  ${rows.length} mount${rows.length === 1 ? '' : 's'}`
      const screen = renderWatch(rows, history, output.columns ?? 120, heading, problem)
      output.write(`\x1b[H\x1b[2J${screen.join('\n')}\n`)
      let timer: NodeJS.Timeout | undefined
      await Promise.race([stopped, new Promise<void>((resolve) => { timer = setTimeout(resolve, intervalMs) })])
      clearTimeout(timer)
    }
  } finally {
    connection?.close()
    input.off('data', onKey)
    if (raw) input.setRawMode(false)
    input.pause()
    output.write('\x1b[?25h\x1b[?1049l')
  }
  return 0
}
