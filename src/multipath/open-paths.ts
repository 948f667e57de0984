/**
 * A client over several paths to one export: every connection (engine) chooses its path each
 * time it connects, the first connection's export is the reference every path must show, and
 * the checker keeps every path's state current.
 *
 *   connect ─► connection 1 on the first path that answers (the reference: its export, and
 *              the digest of the identity range if one is named)
 *           ─► every other path probed once (identity checked) ─► connections 2..n
 *           ─► the checker, every pollingInterval
 *
 *   a connection is lost ─► its path failed ─► (failover) the next ready path is active
 *     └► its engine reconnects at once: to the active path (failover) or its own (round-robin,
 *        else any ready one); requests in flight and queued are sent there, after the replay
 *        of acknowledged writes, with every ordering rule of the engine kept
 *   the active path changes (failover, failback, switch path), a path is ready again, or a
 *     connection comes up ─► every connection away from its path (the active one; in
 *     round-robin its own) reconnects softly: what is on its wire finishes there, new
 *     requests go to the new path
 */
import { ConnectionError, ServerChangedError, describeError } from '../errors.ts'
import { NBD_CMD, NBD_FLAG } from '../protocol/constants.ts'
import { establish, type Connection } from '../connector/connection.ts'
import type { ExportInfo } from '../connector/export-info.ts'
import { Engine, type Recover } from '../client/engine/engine.ts'
import type { ResolvedOptions, ResolvedPaths } from '../client/options.ts'
import { connectOptions, connectionCount, engineOptions } from '../client/pool.ts'
import { PathChecker } from './checker.ts'
import { digestOf, identityProblem } from './identity.ts'
import { PathSet } from './path-set.ts'

export interface Multipath {
  readonly paths: PathSet
  readonly checker: PathChecker
  /** The connections that a FLUSH must go to: one per path carrying writes (round-robin), or one. */
  flushEngines: () => Engine[]
  stop: () => void
}

export async function openMultipath (resolved: ResolvedOptions, mp: ResolvedPaths, recover: Recover, signal: AbortSignal | undefined): Promise<{ engines: Engine[], multipath: Multipath }> {
  const paths = new PathSet(mp.uris, mp.selector, mp.failback)
  const n = mp.uris.length
  let reference: ExportInfo | undefined
  let referenceDigest: string | undefined
  const engines: Engine[] = []

  const establishPath = async (index: number, s: AbortSignal): Promise<Connection> => {
    const conn = await establish(connectOptions(mp.endpoints[index]!), s)
    const problem = reference === undefined ? undefined : identityProblem(reference, conn.info, mp.identity)
    if (problem !== undefined) {
      conn.socket.destroy()
      throw new ServerChangedError(`path ${index + 1} presents a different export: ${problem}`)
    }
    return { ...conn, path: index }
  }

  /** Each connection's establish: its candidate paths in order, the first that works. */
  const establishFor = (connection: number) => async (s: AbortSignal): Promise<Connection> => {
    const order = reference === undefined ? Array.from({ length: n }, (_, i) => i) : paths.candidates(connection)
    if (order.length === 0) throw new ConnectionError('no path to the export can be used: every one failed its identity check or is disabled')
    let last: unknown
    for (const index of order) {
      try {
        const conn = await establishPath(index, s)
        paths.ready(index, 'connected')
        return conn
      } catch (err) {
        if (s.aborted) throw err
        last = err
        if (err instanceof ServerChangedError) paths.refused(index, err.message)
        else paths.failed(index, describeError(err))
      }
    }
    throw last
  }

  const open = (connection: number): Promise<Engine> => Engine.open(engineOptions(resolved, `connection ${connection + 1}`, recover, establishFor(connection), {
    pathFailed: (path, reason) => { paths.failed(path, reason) }
  }), signal)

  const linksOn = (index: number): number => engines.filter((e) => e.state === 'CONNECTED' && e.path === index).length
  paths.linkCounter = linksOn

  /** A probe of one path: its own connection, the identity, one small READ. */
  const probe = async (index: number): Promise<string> => {
    const engine = await Engine.open({ establish: (s) => establishPath(index, s), maxInFlight: 1, requestTimeout: 0, reconnectDelay: 0, openTimeout: 0 })
    try {
      const timeout = AbortSignal.timeout(checkTimeout(mp.pollingInterval))
      if (typeof mp.identity === 'object') {
        const dest = Buffer.alloc(mp.identity.length)
        await engine.submit({ type: NBD_CMD.READ, flags: 0, offset: BigInt(mp.identity.offset), length: dest.length, dest }, timeout)
        if (digestOf(dest) !== referenceDigest) throw new ServerChangedError(`path ${index + 1} presents a different export: the identity bytes at ${mp.identity.offset}+${mp.identity.length} differ`)
        return 'probe: identity bytes match'
      }
      const length = probeLength(engine.info)
      await engine.submit({ type: NBD_CMD.READ, flags: 0, offset: 0n, length, dest: Buffer.alloc(length) }, timeout)
      return 'probe: ok'
    } finally {
      await engine.close().catch(() => {})
    }
  }
  /** A path in use: one small READ on one of its connections, answered within the bound. */
  const checkInUse = (index: number): Promise<string> | undefined => {
    const engine = engines.find((e) => e.state === 'CONNECTED' && e.path === index)
    if (engine === undefined) return undefined
    const length = probeLength(engine.info)
    return engine.check({ type: NBD_CMD.READ, flags: 0, offset: 0n, length, dest: Buffer.alloc(length) }, checkTimeout(mp.pollingInterval))
      .then(() => 'in use: ok', (err: unknown) => {
        // Moved elsewhere meanwhile (a switch): this says nothing about the path.
        if (engine.path !== index) return 'in use'
        throw err
      })
  }
  const checker = new PathChecker({ paths, interval: mp.pollingInterval, probe, checkInUse })

  const stop = (): void => {
    checker.stop()
    paths.stop()
  }
  try {
    const first = await open(0)
    engines.push(first)
    reference = first.info
    if (typeof mp.identity === 'object') {
      const dest = Buffer.alloc(mp.identity.length)
      await first.submit({ type: NBD_CMD.READ, flags: 0, offset: BigInt(mp.identity.offset), length: dest.length, dest })
      referenceDigest = digestOf(dest)
    }
    // Every other path, once, before more connections choose among them.
    await Promise.all(Array.from({ length: n }, (_, i) => i).filter((i) => i !== first.path).map((i) => checker.check(i)))
    let count = connectionCount(resolved, first.info)
    if (mp.selector === 'round-robin') {
      // Every path that joins keeps the reference's capabilities, multi-conn among them.
      if ((first.info.flags & NBD_FLAG.CAN_MULTI_CONN) === 0) throw new ConnectionError('round-robin needs every path to allow multi-conn (CAN_MULTI_CONN): the export does not')
      count = Math.max(count, n)
    }
    const rest = await Promise.allSettled(Array.from({ length: count - 1 }, (_, i) => open(i + 1)))
    for (const r of rest) if (r.status === 'fulfilled') engines.push(r.value)
    const failed = rest.find((r) => r.status === 'rejected')
    if (failed !== undefined) throw failed.reason
  } catch (err) {
    stop()
    await Promise.all(engines.map((e) => e.close().catch(() => {})))
    throw err
  }

  // Where connection k belongs: the active path (failover), or its own one (round-robin,
  // unless failback is manual). Checked whenever that can change, and whenever a connection
  // comes up: one that was choosing its path while the active one changed lands on the old
  // path, and is moved too (a switch only moves connections that are up at the time).
  const home = (k: number): number | undefined => mp.selector === 'failover' ? paths.active : paths.failback === 'manual' ? undefined : k % n
  const converge = (): void => {
    engines.forEach((e, k) => {
      const want = home(k)
      // Softly: what is on its wire finishes there, new requests go to the new path.
      if (want !== undefined && e.state === 'CONNECTED' && e.path !== want && paths.usable(want)) e.reconnect()
    })
  }
  paths.on('switch', converge)
  paths.on('change', (change) => { if (change.to === 'ready') converge() })
  for (const e of engines) e.on('state', (change) => { if (change.to === 'CONNECTED') converge() })
  checker.start()

  const flushEngines = (): Engine[] => {
    if (mp.selector !== 'round-robin') return [engines.find((e) => e.state === 'CONNECTED') ?? engines[0]!]
    const byPath = new Map<number | undefined, Engine>()
    for (const e of engines) if (e.state === 'CONNECTED' && !byPath.has(e.path)) byPath.set(e.path, e)
    return byPath.size === 0 ? [engines[0]!] : [...byPath.values()]
  }
  return { engines, multipath: { paths, checker, flushEngines, stop } }
}

/** The checker's READ: one minimum block at offset 0 (none of an empty export). */
function probeLength (info: ExportInfo): number {
  return info.size === 0n ? 0 : Math.min(info.blockSize?.minimum ?? 1, Number(info.size))
}

/**
 * How long a check may take: multipathd's checker_timeout, here twice the polling interval and
 * at least 5 s (an answer queued behind a deep queue of large writes is slow, not dead).
 */
function checkTimeout (pollingInterval: number): number {
  return Math.max(5000, 2 * pollingInterval)
}
