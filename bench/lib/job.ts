/** What a worker process is asked to do, and what it answers; shared by the workers and the harness. */
export interface Job {
  readonly mode: 'io' | 'copy'
  readonly uri: string
  readonly rw: 'randread' | 'randwrite' | 'read' | 'write'
  /** Request size, bytes. */
  readonly bs: number
  /** Requests in flight, in all. */
  readonly qd: number
  readonly seconds: number
  readonly connections?: number
  /** For clients that cannot take a URI: a Unix socket path, or a TCP port on 127.0.0.1. */
  readonly socket?: string
  readonly port?: number
  /** nbdts only: the package entry to load instead of this tree's (a baseline build's dist/index.js). */
  readonly lib?: string
  /** nbdts only: client options on top of the bench's (e.g. replayLog: 0). */
  readonly options?: Readonly<Record<string, number | string | boolean>>
}

export interface WorkerResult {
  /** Requests completed (io), or requests issued (copy). */
  readonly ops: number
  /** Time measured: the timed loop (io), or connect to close (copy). */
  readonly seconds: number
  readonly maxRssKiB: number
}

/** The [offset, length] requests that read every data extent in pieces of at most `size`. */
export function copyPlan (extents: ReadonlyArray<{ offset: number, length: number, data: boolean }>, size: number): Array<[number, number]> {
  const pieces: Array<[number, number]> = []
  for (const e of extents) {
    if (!e.data) continue
    for (let o = e.offset; o < e.offset + e.length; o += size) pieces.push([o, Math.min(size, e.offset + e.length - o)])
  }
  return pieces
}
