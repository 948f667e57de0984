/**
 * The engines of one client, one per connection, and which one the next request goes to.
 *
 *   NbdClient ──► pick() ──► Engine 1 … Engine N (N > 1 only with CAN_MULTI_CONN)
 *
 * A request goes to the first connected engine with fewer than SPILL requests, else to the
 * least loaded: light traffic stays on one socket, where one wake-up often brings several
 * replies; heavy traffic spreads over all of them. Connections are numbered from 1.
 */
import { NotSupportedError, ServerChangedError } from '../errors.ts'
import { NBD_FLAG } from '../protocol/constants.ts'
import { establish, type Establish, type EstablishOptions } from '../connector/connection.ts'
import type { ExportInfo } from '../connector/export-info.ts'
import { openMultipath, type Multipath } from '../multipath/open-paths.ts'
import { ClientStats, type StatsSnapshot } from '../stats/client-stats.ts'
import { Engine, type EngineOptions, type LedgerHooks } from './engine/engine.ts'
import type { NbdClientState } from './engine/lifecycle.ts'
import type { ResolvedOptions } from './options.ts'
import { checkReconnectedExport } from './reconnect-check.ts'

/** `connections: 'auto'` with a server that allows multi-conn (nbdfuse's and nbdcopy's default too). */
const AUTO_CONNECTIONS = 4

/** With several connections, a connection takes this many requests before the next is used. */
const SPILL = 4

export interface ConnectionInfo {
  /** 1-based. */
  readonly connection: number
  readonly state: NbdClientState
  /** With several paths: the one it runs over (1-based). */
  readonly path: number | undefined
  /** The live connection runs over TLS (undefined while there is none). */
  readonly tls: boolean | undefined
  readonly inFlight: number
  readonly queued: number
  readonly lastError: string | undefined
  readonly stats: StatsSnapshot
}

export class EnginePool {
  readonly engines: readonly Engine[]
  /** With several paths to the export: the paths and their checker. */
  readonly multipath: Multipath | undefined

  private constructor (engines: Engine[], multipath?: Multipath) {
    this.engines = engines
    this.multipath = multipath
  }

  /**
   * Opens the first connection, then, when more are asked for and the server allows
   * multi-conn, the rest. `hooks` are the write ledger's, on every connection. With several
   * paths (resolved.multipath) every connection chooses its path (see multipath/).
   */
  static async open (resolved: ResolvedOptions, hooks: LedgerHooks, signal: AbortSignal | undefined): Promise<EnginePool> {
    if (resolved.multipath !== undefined) {
      const { engines, multipath } = await openMultipath(resolved, resolved.multipath, hooks, signal)
      return new EnginePool(engines, multipath)
    }
    const open = (label: string): Promise<Engine> => Engine.open(engineOptions(resolved, label, hooks, (s) => establish(connectOptions(resolved), s)), signal)
    const first = await open('connection 1')
    let connections: number
    try {
      connections = connectionCount(resolved, first.info)
    } catch (err) {
      await first.close()
      throw err
    }
    if (connections === 1) return new EnginePool([first])
    const rest = await Promise.allSettled(
      Array.from({ length: connections - 1 }, (_, i) => open(`connection ${i + 2}`)))
    const engines = [first, ...rest.flatMap((r) => r.status === 'fulfilled' ? [r.value] : [])]
    const failed = rest.find((r) => r.status === 'rejected')
    // Every connection must be to the export the first one found (TLS included): the same
    // identity check as a reconnect.
    const problem = failed === undefined ? engines.slice(1).map((e) => checkReconnectedExport(first.info, e.info)).find((p) => p !== undefined) : undefined
    if (failed !== undefined || problem !== undefined) {
      await Promise.all(engines.map((e) => e.close()))
      throw failed !== undefined ? failed.reason : new ServerChangedError(`another connection to the server found a different export: ${problem}`)
    }
    return new EnginePool(engines)
  }

  /** The connection for the next request. */
  pick (): Engine {
    const engines = this.engines
    if (engines.length === 1) return engines[0]!
    let best: Engine | undefined
    const usable = this.multipath?.usable
    for (const e of engines) {
      // A connection still up on a path that failed takes nothing new (it is on its way off).
      if (e.state !== 'CONNECTED' || (usable !== undefined && !usable(e))) continue
      const load = e.inFlight + e.queued
      if (load < SPILL) return e
      if (best === undefined || load < best.inFlight + best.queued) best = e
    }
    return best ?? engines[0]!
  }

  get states (): NbdClientState[] {
    return this.engines.map((e) => e.state)
  }

  stats (): StatsSnapshot {
    return ClientStats.sum(this.engines.map((e) => e.snapshot()))
  }

  connectionInfo (): ConnectionInfo[] {
    return this.engines.map((e, i) => ({
      connection: i + 1,
      state: e.state,
      path: e.path === undefined ? undefined : e.path + 1,
      tls: e.tls,
      inFlight: e.inFlight,
      queued: e.queued,
      lastError: e.lastConnectError?.message,
      stats: e.snapshot()
    }))
  }

  requests (): Array<{ connection: number, cookie: number, type: string, offset: bigint, length: number, ageMs: number, attempts: number }> {
    return this.engines.flatMap((e, i) => e.requests().map((r) => ({ connection: i + 1, ...r })))
  }

  /** The connections a FLUSH goes to: one (multi-conn covers the rest), or one per path in use. */
  flushEngines (): Engine[] {
    return this.multipath?.flushEngines() ?? [this.pick()]
  }

  async close (): Promise<void> {
    // The checker's probes are aborted and its checks end with the connections: nothing of
    // it outlives close().
    const stopping = this.multipath?.stop()
    await Promise.all(this.engines.map((e) => e.close()))
    await stopping
  }

  destroy (): void {
    this.multipath?.stop().catch(() => {})
    for (const e of this.engines) e.destroy()
  }
}

/** What one connection of `resolved` negotiates. */
export function connectOptions (resolved: ResolvedOptions): EstablishOptions {
  return {
    open: resolved.open,
    exportName: resolved.exportName,
    structuredReplies: resolved.structuredReplies,
    extendedHeaders: resolved.extendedHeaders,
    metaContexts: resolved.metaContexts,
    listContexts: resolved.listContexts,
    handshakeTimeout: resolved.handshakeTimeout,
    tls: resolved.tls
  }
}

/** An engine of `resolved`, connecting with `establishOne`. */
export function engineOptions (resolved: ResolvedOptions, label: string, hooks: LedgerHooks, establishOne: Establish, extra: Partial<EngineOptions> = {}): EngineOptions {
  const address = resolved.address
  return {
    establish: establishOne,
    maxInFlight: resolved.maxInFlight,
    requestTimeout: resolved.requestTimeout,
    reconnectDelay: resolved.reconnectDelay,
    openTimeout: resolved.openTimeout,
    label,
    ...hooks,
    ...(resolved.backoff !== undefined && { backoff: resolved.backoff }),
    ...(address?.transport === 'unix' && resolved.injectedOpen !== true && resolved.multipath === undefined && { watchPath: address.path }),
    ...extra
  }
}

/** How many connections: 'auto' is 4 with multi-conn, else 1; more than one needs multi-conn. */
export function connectionCount (resolved: ResolvedOptions, info: ExportInfo): number {
  const multiConn = (info.flags & NBD_FLAG.CAN_MULTI_CONN) !== 0
  const connections = resolved.connections === 'auto' ? (multiConn ? AUTO_CONNECTIONS : 1) : resolved.connections
  if (connections > 1 && !multiConn) {
    throw new NotSupportedError(`the server does not advertise CAN_MULTI_CONN, so ${connections} connections would not be safe`)
  }
  return connections
}
