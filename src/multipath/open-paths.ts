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
import { ConnectionError, ServerChangedError, TimeoutError, describeError, publicError } from '../errors.ts'
import { linkedSignal } from '../util/abort.ts'
import { NBD_CMD, NBD_FLAG } from '../protocol/constants.ts'
import { establish, type Connection } from '../connector/connection.ts'
import type { ExportInfo } from '../connector/export-info.ts'
import type { RecoveryChannel } from '../client/engine/connections.ts'
import type { Command } from '../client/engine/request.ts'
import { Engine, type LedgerHooks } from '../client/engine/engine.ts'
import type { ResolvedOptions, ResolvedPaths } from '../client/options.ts'
import { connectOptions, connectionCount, engineOptions } from '../client/pool.ts'
import { PathChecker } from './checker.ts'
import { identityProblem } from './identity.ts'
import { PathSet } from './path-set.ts'

export interface Multipath {
  readonly paths: PathSet
  readonly checker: PathChecker
  /** The connections that a FLUSH must go to: one per path that carries a connection. */
  flushEngines: () => Engine[]
  /** Ordering's watch: the client's own writes to the identity range keep its reference. */
  watchWrite: ((command: Command) => ((ok: boolean) => void) | undefined) | undefined
  /** May new requests go to this connection (its path is usable)? */
  usable: (engine: Engine) => boolean
  /** Stops the checker (aborting its probes) and the failback timer; resolves once they are done. */
  stop: () => Promise<void>
}

export async function openMultipath (resolved: ResolvedOptions, mp: ResolvedPaths, hooks: LedgerHooks, signal: AbortSignal | undefined): Promise<{ engines: Engine[], multipath: Multipath }> {
  const paths = new PathSet(mp.uris, mp.selector, mp.failback)
  const n = mp.uris.length
  let reference: ExportInfo | undefined
  /**
   * The identity bytes as this client last knew them: read at connect, then kept up to date
   * from its own acknowledged writes to the range (an ext4 superblock is rewritten at every
   * mount), so that only someone else's bytes refuse a path.
   */
  let referenceBytes: Buffer | undefined
  let writesOverIdentity = 0
  let identityEpoch = 0
  let identityUnknown = false
  const watchWrite = (command: Command): ((ok: boolean) => void) | undefined => {
    if (typeof mp.identity !== 'object') return undefined
    const lo = BigInt(mp.identity.offset)
    const hi = lo + BigInt(mp.identity.length)
    const end = command.offset + BigInt(command.length)
    if (end <= lo || command.offset >= hi) return undefined
    writesOverIdentity++
    identityEpoch++
    return (ok) => {
      writesOverIdentity--
      identityEpoch++
      if (referenceBytes === undefined) return
      const from = command.offset > lo ? command.offset : lo
      const to = end < hi ? end : hi
      const at = Number(from - lo)
      if (ok && command.type === NBD_CMD.WRITE && command.payload !== undefined) {
        referenceBytes.set(command.payload.subarray(Number(from - command.offset), Number(to - command.offset)), at)
      } else if (ok && command.type === NBD_CMD.WRITE_ZEROES) {
        referenceBytes.fill(0, at, at + Number(to - from))
      } else {
        // Failed (it may or may not have landed) or trimmed (what reads back is the server's
        // choice): the next look at a path in use says what the range holds.
        identityUnknown = true
      }
    }
  }
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
        else paths.failed(index, describeError(err), publicError(err))
      }
    }
    throw last
  }

  /** The identity bytes (pathIdentity { offset, length }) as `read` returns them, checked. */
  const checkIdentityBytes = async (index: number, read: (command: Command) => Promise<unknown>, inUse: boolean): Promise<void> => {
    if (typeof mp.identity !== 'object' || referenceBytes === undefined) return
    const dest = Buffer.alloc(mp.identity.length)
    const before = identityEpoch
    await read({ type: NBD_CMD.READ, flags: 0, offset: BigInt(mp.identity.offset), length: dest.length, dest })
    // Our own write to the range is on its way, or was while we read: no verdict.
    if (writesOverIdentity > 0 || identityEpoch !== before) return
    if (identityUnknown) {
      // A write of ours there failed or trimmed: a path in use holds what is true now.
      if (inUse) {
        referenceBytes = dest
        identityUnknown = false
      }
      return
    }
    if (dest.equals(referenceBytes)) return
    const message = `path ${index + 1} presents a different export: the identity bytes at ${mp.identity.offset}+${mp.identity.length} differ`
    paths.refused(index, message)
    throw new ServerChangedError(message)
  }
  // Every connection, before it takes a request (or a replay): the bytes must match too, not
  // only what the handshake shows.
  const vet = typeof mp.identity !== 'object'
    ? undefined
    : async (channel: RecoveryChannel): Promise<void> => { if (channel.path !== undefined) await checkIdentityBytes(channel.path, channel.submit, false) }

  const open = (connection: number): Promise<Engine> => Engine.open(engineOptions(resolved, `connection ${connection + 1}`, hooks, establishFor(connection), {
    pathFailed: (path, reason) => { paths.failed(path, reason) },
    alternative: () => paths.anyUsable(),
    ...(vet !== undefined && { vet })
  }), signal)

  const linksOn = (index: number): number => engines.filter((e) => e.state === 'CONNECTED' && e.path === index).length
  paths.linkCounter = linksOn

  /**
   * A probe of one path: its own connection, the identity, one small READ (the identity bytes
   * when named). Bounded, and aborted when the client closes.
   */
  const probe = async (index: number, stop: AbortSignal): Promise<string> => {
    const ms = checkTimeout(mp.pollingInterval)
    const { signal: bound, dispose } = linkedSignal([stop], ms, () => new TimeoutError(`no answer within ${ms} ms`))
    let engine: Engine | undefined
    try {
      engine = await Engine.open({ establish: (s) => establishPath(index, s), maxInFlight: 1, requestTimeout: 0, reconnectDelay: 0, openTimeout: 0 }, bound)
      if (typeof mp.identity === 'object') {
        const probing = engine
        await checkIdentityBytes(index, (command) => probing.submit(command, bound), false)
        return 'probe: identity bytes match'
      }
      const length = probeLength(engine.info)
      await engine.submit({ type: NBD_CMD.READ, flags: 0, offset: 0n, length, dest: Buffer.alloc(length) }, bound)
      return 'probe: ok'
    } finally {
      dispose()
      // Nothing of the caller's is on a probe's wire: no graceful close, which would wait for
      // an unanswered READ (held by its slot) for as long as a hung server stays so.
      engine?.destroy()
    }
  }
  /**
   * A path in use: one small READ on one of its connections (the identity bytes when named),
   * answered within the bound. Undefined when no connection is up there; resolves undefined
   * (no verdict) when the connection moved elsewhere meanwhile.
   */
  const checkInUse = (index: number): Promise<string | undefined> | undefined => {
    const engine = engines.find((e) => e.state === 'CONNECTED' && e.path === index)
    if (engine === undefined) return undefined
    const ms = checkTimeout(mp.pollingInterval)
    const read = (command: Command): Promise<void> => engine.check(command, ms)
    const check = typeof mp.identity === 'object'
      ? checkIdentityBytes(index, read, true).then(() => 'in use: identity bytes match')
      : read({ type: NBD_CMD.READ, flags: 0, offset: 0n, length: probeLength(engine.info), dest: Buffer.alloc(probeLength(engine.info)) }).then(() => 'in use: ok')
    return check.catch((err: unknown) => {
      if (engine.path !== index && !(err instanceof ServerChangedError)) return undefined
      throw err
    })
  }
  const checker = new PathChecker({ paths, interval: mp.pollingInterval, probe, checkInUse })

  const stop = async (): Promise<void> => {
    paths.stop()
    await checker.stop()
  }
  try {
    const first = await open(0)
    engines.push(first)
    reference = first.info
    if (typeof mp.identity === 'object') {
      const dest = Buffer.alloc(mp.identity.length)
      await first.submit({ type: NBD_CMD.READ, flags: 0, offset: BigInt(mp.identity.offset), length: dest.length, dest })
      referenceBytes = dest
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
    await stop()
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
      const here = e.path
      if (e.state !== 'CONNECTED' || here === undefined) return
      if (!paths.usable(here)) {
        // Its path failed or was taken out: leave it, if there is anywhere to go. A failed
        // path's connection drains as a failing one (callers hear within their bound); a
        // disabled one's server is fine, so what is on its wire finishes there.
        if (!paths.anyUsable()) return
        if (paths.stateOf(here) === 'failed') e.abandon(`path ${here + 1} failed`)
        else e.reconnect()
        return
      }
      const want = home(k)
      // Softly: what is on its wire finishes there, new requests go to the new path.
      if (want !== undefined && here !== want && paths.usable(want)) e.reconnect()
    })
  }
  paths.on('switch', converge)
  paths.on('change', converge)
  for (const e of engines) e.on('state', (change) => { if (change.to === 'CONNECTED') converge() })
  checker.start()

  // A FLUSH goes to one connection on each path that carries one: each server flushes only
  // what it acknowledged (in failover too, while connections are still moving). A connection
  // that leaves a path flushes there first (Link.drain), and one whose path died has its
  // acknowledged writes in the write ledger, written again on the next path before anything.
  // A connection that is reconnecting gets the FLUSH too: it goes out there after the replay of
  // what its lost connection acknowledged, which a FLUSH on another path does not cover.
  const flushEngines = (): Engine[] => {
    const byPath = new Map<number | undefined, Engine>()
    const reconnecting = engines.filter((e) => e.state === 'CONNECTING_WAIT' || e.state === 'CONNECTING_NOWAIT')
    for (const e of engines) if (e.state === 'CONNECTED' && !byPath.has(e.path)) byPath.set(e.path, e)
    const chosen = [...byPath.values(), ...reconnecting]
    return chosen.length === 0 ? [engines[0]!] : chosen
  }
  const usable = (e: Engine): boolean => e.path === undefined || paths.usable(e.path)
  return { engines, multipath: { paths, checker, flushEngines, usable, stop, watchWrite: typeof mp.identity === 'object' ? watchWrite : undefined } }
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
