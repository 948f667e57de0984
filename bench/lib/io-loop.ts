/**
 * The library rows' request loop, shared by the bench workers: `qd` loops, each with its own
 * buffer (as an application would), reading or writing `bs` at sequential or random offsets
 * until a deadline. `run(ms)` runs them for `ms` and returns the requests done.
 */
import type { NbdClient } from 'nbdts'

export interface IoLoad {
  readonly rw: string
  readonly bs: number
  readonly qd: number
}

export function ioLoop (client: NbdClient, load: IoLoad): (ms: number) => Promise<number> {
  const blocks = Math.floor(client.size / load.bs)
  let next = 0
  const offset = load.rw.startsWith('rand')
    ? () => Math.floor(Math.random() * blocks) * load.bs
    : () => { const o = next * load.bs; next = (next + 1) % blocks; return o }
  const writing = load.rw.endsWith('write')
  const buffers = Array.from({ length: load.qd }, () => Buffer.alloc(load.bs, 0x5a))
  return async (ms) => {
    const stopAt = performance.now() + ms
    let ops = 0
    await Promise.all(buffers.map(async (buf) => {
      while (performance.now() < stopAt) {
        if (writing) await client.write(buf, offset())
        else await client.readInto(buf, offset())
        ops++
      }
    }))
    return ops
  }
}
