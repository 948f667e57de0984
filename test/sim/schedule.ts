/**
 * One simulated schedule: a seed chooses the client's options, a workload of concurrent
 * writers, the faults, and every interleaving; the checker judges each step. The same seed
 * replays the same schedule exactly.
 *
 *   loop:  let the process go quiet (every microtask and nextTick run)
 *          judge: durable store, reads, every wait within its bound
 *          choose one, by the seed:  start a writer's next call │ serve a pending request
 *                                    (any connection, any order) │ a fault │ time passes
 *          (nothing left to choose and no timer: a wait without bound)
 */
import { NbdClient } from '../../src/index.ts'
import { blockContent, History, type Op, type OpKind } from './checker.ts'
import { SimServer } from './sim-server.ts'
import { quiet, Rng, VirtualTime } from './world.ts'

const BLOCK = 512
const LARGE_LOG = 256 << 10

export interface ScheduleResult {
  readonly seed: number
  readonly failure: string | undefined
  readonly steps: number
  readonly virtualMs: number
  readonly calls: number
  /** The last steps taken (printed with a failure). */
  readonly trace: readonly string[]
  readonly config: string
}

interface Writer {
  left: number
  busy: boolean
}

export async function runSchedule (seed: number): Promise<ScheduleResult> {
  const rng = new Rng(seed)
  const time = new VirtualTime(rng)
  const trace: string[] = []
  const note = (s: string): void => {
    trace.push(`${String(time.now).padStart(7)} ms  ${s}`)
    if (trace.length > 60) trace.shift()
  }

  const blocks = rng.pick([8, 16, 32])
  const connections = rng.chance(0.45) ? 2 : 1
  const reconnectDelay = rng.pick([0, 0, 1000, 5000, 30_000])
  const requestTimeout = rng.pick([60_000, 3000])
  // Large: more than the export, so nothing overflows (a ring of 32 MiB, the default, would
  // only cost the collector: the exports here are at most 16 KiB).
  const replayLog = rng.pick([LARGE_LOG, LARGE_LOG, LARGE_LOG, 4 * BLOCK, 8 * BLOCK, 16 * BLOCK, 0])
  const maxInFlight = rng.pick([16, 3])
  // The first reconnect back-off: it sets how far apart the connections' attempts fall.
  const backoffMs = rng.pick([10, 100, 500])
  const config = `blocks=${blocks} connections=${connections} reconnectDelay=${reconnectDelay} requestTimeout=${requestTimeout} replayLog=${replayLog} maxInFlight=${maxInFlight} backoff=${backoffMs}`
  // Reads are judged only where the client can keep every acknowledged write (nothing lost).
  const judgeReads = replayLog === LARGE_LOG
  const server = new SimServer(blocks, BLOCK, connections > 1)
  const history = new History(blocks, BLOCK)
  /** How long any one call may take (generous: the bug class is "without bound"). */
  const bound = reconnectDelay + 3 * requestTimeout + 60_000

  const writers: Writer[] = Array.from({ length: 1 + rng.int(4) }, () => ({ left: 3 + rng.int(10), busy: false }))
  let faults = rng.int(7)
  const pending = new Set<{ op: Op, startedAt: number }>()
  const aborts: AbortController[] = []
  let failure: string | undefined
  let steps = 0
  let nextId = 1
  let closing: Promise<void> | null = null
  let closed = false
  let lastDurable = -1

  time.install()
  let client: NbdClient | undefined
  try {
    const connecting = NbdClient.connect({
      open: async () => server.accept(),
      connections,
      reconnectDelay,
      requestTimeout,
      replayLog,
      maxInFlight,
      backoff: { initialMs: backoffMs, maxMs: 2000 }
    })
    let connected: NbdClient | undefined
    let connectError: unknown
    connecting.then((c) => { connected = c }, (err: unknown) => { connectError = err })
    while (connected === undefined && connectError === undefined) {
      await quiet()
      serveAny(server, rng)
      if (!time.advance(time.now + 1) && server.connections.size === 0 && time.nextDue() === Infinity) break
    }
    if (connected === undefined) return done(`the first connect failed: ${String(connectError)}`)
    client = connected

    const start = (w: Writer): void => {
      w.busy = true
      w.left--
      const c = client!
      const roll = rng.next()
      const kind: OpKind = roll < 0.55 ? 'write' : roll < 0.63 ? 'zero' : roll < 0.68 ? 'trim' : roll < 0.82 ? 'read' : 'flush'
      const first = rng.int(blocks)
      const n = kind === 'flush' ? 0 : Math.min(1 + rng.int(3), blocks - first)
      const id = kind === 'write' ? nextId++ : 0
      const op = history.call(kind, kind === 'flush' ? 0 : first, n, id)
      const controller = rng.chance(0.1) ? new AbortController() : undefined
      if (controller !== undefined) aborts.push(controller)
      const signal = controller?.signal
      const fua = rng.chance(0.15)
      const opts = { ...(signal !== undefined && { signal }), ...(fua && { fua: true }) }
      let p: Promise<Buffer | undefined>
      switch (kind) {
        case 'write': {
          const data = Buffer.concat(Array.from({ length: n }, () => blockContent(id, BLOCK)))
          p = c.write(data, first * BLOCK, opts).then(() => undefined)
          break
        }
        case 'zero': p = c.writeZeroes(n * BLOCK, first * BLOCK, opts).then(() => undefined); break
        case 'trim': p = c.trim(n * BLOCK, first * BLOCK, opts).then(() => undefined); break
        case 'read': p = c.read(n * BLOCK, first * BLOCK, signal === undefined ? {} : { signal }); break
        case 'flush': p = c.flush(signal === undefined ? {} : { signal }).then(() => undefined); break
      }
      note(`call #${op.index} ${kind}${n > 0 ? ` blocks ${first}+${n}` : ''}${id > 0 ? ` id ${id}` : ''}${fua ? ' fua' : ''}${controller !== undefined ? ' (abortable)' : ''}`)
      const entry = { op, startedAt: time.now }
      pending.add(entry)
      p.then((data) => {
        history.settle(op, true)
        note(`#${op.index} ${kind} ok`)
        if (kind === 'read' && judgeReads && data !== undefined) failure ??= history.checkRead(op, data)
        // A FLUSH that vouched wrongly may be repaired later by a replay: judge it now.
        if (kind === 'flush') failure ??= history.checkDurable(server.durable)
      }, (err: unknown) => {
        const e = err as { code?: string, message?: string }
        history.settle(op, false, `${e.code ?? ''} ${e.message ?? String(err)}`)
        note(`#${op.index} ${kind} failed: ${e.code ?? ''} ${e.message ?? String(err)}`)
      }).finally(() => {
        pending.delete(entry)
        w.busy = false
      }).catch(() => {})
    }

    for (;;) {
      await quiet()
      steps++
      if (failure !== undefined) break
      if (server.durableVersion !== lastDurable) {
        lastDurable = server.durableVersion
        failure = history.checkDurable(server.durable)
        if (failure !== undefined) break
      }
      for (const p of pending) {
        if (time.now - p.startedAt > bound) failure = `call #${p.op.index} (${p.op.kind}) still waits after ${time.now - p.startedAt} ms (bound ${bound} ms)`
      }
      if (failure !== undefined) break
      if (steps > 200_000) {
        failure = 'more than 200000 steps'
        break
      }
      const idle = writers.every((w) => w.left === 0 && !w.busy)
      if (idle && closing === null) {
        note('close()')
        closing = client.close().then(() => { closed = true }, (err: unknown) => { closed = true; note(`close failed: ${String(err)}`) })
      }
      if (closed) break

      const actions: Array<() => void> = []
      for (const w of writers) if (!w.busy && w.left > 0 && closing === null) actions.push(() => { start(w) })
      for (const conn of server.connections) {
        if (conn.pending.length > 0 && !conn.hung && !conn.closed) {
          actions.push(() => {
            const i = rng.int(conn.pending.length)
            const r = conn.pending[i]!
            note(`serve conn ${conn.id}.${conn.instance} ${['READ', 'WRITE', 'DISC', 'FLUSH', 'TRIM', 'CACHE', 'WRITE_ZEROES'][r.type] ?? r.type} ${r.offset / BLOCK}+${r.length / BLOCK}${server.eio > 0 && r.type !== 0 && r.type !== 3 ? ' (EIO)' : ''}`)
            conn.serve(i)
          })
        }
      }
      if (faults > 0 && closing === null && rng.chance(0.04)) {
        faults--
        actions.length = 0
        actions.push(() => { fault(rng, server, time, client!, aborts, note) })
      }
      if (aborts.length > 0 && rng.chance(0.05)) {
        const c = aborts.splice(rng.int(aborts.length), 1)[0]!
        actions.push(() => { note('abort'); c.abort() })
      }
      if (server.cache.size > 0 && rng.chance(0.02)) {
        actions.push(() => {
          const keys = [...server.cache.keys()]
          const b = keys[rng.int(keys.length)]!
          note(`writeback of block ${b}`)
          server.writeback(b)
        })
      }
      if (actions.length > 0 && rng.chance(0.85)) {
        rng.pick(actions)()
        continue
      }
      const due = time.nextDue()
      if (actions.length === 0 && due === Infinity) {
        failure = `nothing can happen any more, yet ${pending.size} call(s) wait${closing !== null && !closed ? ' and close() has not finished' : ''}`
        break
      }
      time.advance(actions.length === 0 ? due : Math.min(due, time.now + 1 + rng.int(200)))
    }
    if (failure === undefined) {
      // The last word: power is lost once more; what a FLUSH vouched for must be there.
      server.crash()
      failure = history.checkDurable(server.durable)
    }
    return done(failure)
  } finally {
    client?.destroy()
    time.uninstall()
  }

  function done (f: string | undefined): ScheduleResult {
    return { seed, failure: f, steps, virtualMs: time.now, calls: history.ops.length, trace: [...trace], config }
  }
}

function serveAny (server: SimServer, rng: Rng): void {
  for (const conn of server.connections) if (conn.pending.length > 0 && !conn.hung) conn.serve(rng.int(conn.pending.length))
}

function fault (rng: Rng, server: SimServer, time: VirtualTime, client: NbdClient, _aborts: AbortController[], note: (s: string) => void): void {
  const roll = rng.next()
  const conns = [...server.connections].filter((c) => !c.closed)
  if (roll < 0.1 && server.alive) {
    // A crash loop: down briefly, up briefly, down again; gaps around a back-off's length.
    const [down1, up, down2] = [rng.int(1000), rng.int(1000), rng.int(100)]
    note(`crash loop: crash, restart in ${down1} ms, crash ${up} ms later, restart ${down2} ms after`)
    server.crash()
    setTimeout(() => {
      note('restart'); server.restart()
      setTimeout(() => {
        note('crash'); server.crash()
        setTimeout(() => { note('restart'); server.restart() }, down2)
      }, up)
    }, down1)
  } else if (roll < 0.45) {
    if (!server.alive) return
    const down = rng.chance(0.5) ? rng.int(50) : rng.int(3000)
    // Some servers come back failing writes for a moment: the first replay fails.
    const eio = rng.chance(0.3) ? 1 + rng.int(4) : 0
    note(`crash (restart in ${down} ms${eio > 0 ? `, then ${eio} write-like requests fail with EIO` : ''})`)
    server.crash()
    setTimeout(() => { note('restart'); server.restart(); server.eio = eio }, down)
  } else if (roll < 0.55 && conns.length > 0) {
    const c = rng.pick(conns)
    note(`drop conn ${c.id}`)
    c.close()
  } else if (roll < 0.7) {
    server.eio = 1 + rng.int(3)
    note(`the next ${server.eio} write-like requests fail with EIO`)
  } else if (roll < 0.8 && conns.length > 0) {
    const c = rng.pick(conns)
    // Some hung servers wake up again, long after the client gave up on them, and run what
    // they had read (a write in doubt may land late).
    const wakes = rng.chance(0.5) ? rng.int(60_000) : -1
    note(`conn ${c.id} hangs${wakes >= 0 ? ` (wakes in ${wakes} ms)` : ''}`)
    c.hung = true
    // One stopped mid-reply stays stopped: a server that went on there would break the
    // protocol in a way no client can see (NBD has no checksum).
    if (wakes >= 0) setTimeout(() => { if (!c.stalled) { note(`conn ${c.id} wakes`); c.hung = false } }, wakes)
  } else if (roll < 0.88 && conns.length > 0) {
    const c = rng.pick(conns)
    note(`conn ${c.id} stalls in its next READ reply`)
    c.stallNext = true
  } else {
    note('reconnect()')
    client.reconnect()
  }
  void time
}
