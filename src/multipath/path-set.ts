/**
 * The paths of one export, and which one each connection should use (multipathd's path
 * groups and path selectors, for NBD).
 *
 *   path state   ready ◄──probe ok / a link works── failed ◄──probe fails / a link is lost──┐
 *                  │                                                                      │
 *                  └─────────── fail path N ──► disabled ──reinstate path N──► (probed) ──┘
 *
 *   failover     one active path; the others on standby. The active path fails: the next
 *                ready one becomes active, and every connection moves there.
 *   round-robin  connection i prefers path i mod n (every path must allow multi-conn).
 *   failback     the first path, ready again: immediate (switch back now), manual (stay until
 *                switch path N), or a delay (switch once it has stayed ready that long).
 *
 * A path is used only once it has shown the export the first connection found (the identity
 * check: same size, the capabilities in use, and the identity the user names); one that shows
 * anything else is failed with the reason, and stays unused until a probe says otherwise.
 */
import { EventEmitter } from 'node:events'
import { performance } from 'node:perf_hooks'

export type PathSelector = 'failover' | 'round-robin'
/** 'immediate', 'manual', or a delay in ms. */
export type Failback = 'immediate' | 'manual' | number
export type PathState = 'ready' | 'failed' | 'disabled'

export interface PathStatus {
  /** 1-based, in the order given. */
  readonly path: number
  readonly uri: string
  readonly state: PathState
  /** The failover path (or, in round-robin, any path a connection uses). */
  readonly active: boolean
  /** Connections whose live link runs over this path. */
  readonly connections: number
  /** What the last check said, and when (ISO time). */
  readonly checker: string
  readonly checkedAt: string | undefined
  readonly lastFailure: { readonly at: string, readonly reason: string, readonly publicReason: string } | undefined
  /** checker as users other than root see it: a failure's class and code, never its message. */
  readonly publicChecker: string
}

export interface PathChange {
  readonly path: number
  readonly from: PathState
  readonly to: PathState
  readonly reason: string
}

interface Entry {
  readonly index: number
  readonly uri: string
  state: PathState
  /** It once showed the right export: it may be used when it works. */
  verified: boolean
  checker: string
  publicChecker: string
  checkedAt: number | undefined
  lastFailure: { at: number, reason: string, publicReason: string } | undefined
  /** performance.now() since when it has been ready without a break (failback delays). */
  readySince: number
}

export class PathSet extends EventEmitter<{ change: [PathChange], switch: [number] }> {
  readonly selector: PathSelector
  failback: Failback
  readonly #entries: Entry[]
  /** The failover path (0-based). */
  #active = 0
  /** `switch path N` chose the active path: no failback until it fails. */
  #switched = false
  #failbackTimer: NodeJS.Timeout | null = null
  /** Per path, the connections whose live link runs over it (set by the pool). */
  #linksOn: (index: number) => number = () => 0

  constructor (uris: readonly string[], selector: PathSelector, failback: Failback) {
    super()
    this.selector = selector
    this.failback = failback
    this.#entries = uris.map((uri, index) => ({
      index, uri, state: 'failed', verified: false, checker: 'not checked yet', publicChecker: 'not checked yet', checkedAt: undefined, lastFailure: undefined, readySince: 0
    }))
  }

  get size (): number {
    return this.#entries.length
  }

  /** The failover path, 0-based. */
  get active (): number {
    return this.#active
  }

  stateOf (index: number): PathState {
    return this.#entries[index]!.state
  }

  /** Some path is ready and showed the right export. */
  anyUsable (): boolean {
    return this.#entries.some((e) => e.state === 'ready' && e.verified)
  }

  /** Ready, and it showed the right export: a connection may be moved there. */
  usable (index: number): boolean {
    const e = this.#entries[index]
    return e !== undefined && e.state === 'ready' && e.verified
  }

  set linkCounter (count: (index: number) => number) {
    this.#linksOn = count
  }

  uri (index: number): string {
    return this.#entries[index]!.uri
  }

  /**
   * The paths a connection should try, best first: its preferred path if it can be used, then
   * the other usable paths (ready first), never a disabled or unverified one.
   */
  candidates (connection: number): number[] {
    const preferred = this.selector === 'failover' ? this.#active : connection % this.#entries.length
    const usable = this.#entries.filter((e) => e.state !== 'disabled' && e.verified)
    const rank = (e: Entry): number => (e.index === preferred ? 0 : 1) + (e.state === 'ready' ? 0 : 2)
    return usable.sort((a, b) => rank(a) - rank(b) || a.index - b.index).map((e) => e.index)
  }

  /** A connection or a probe found the export there, as it should be. */
  ready (index: number, checker: string): void {
    const e = this.#entries[index]!
    e.verified = true
    // Our own verdicts ("connected", "probe: ok"), never a server's words: public as they are.
    e.checker = checker
    e.publicChecker = checker
    e.checkedAt = Date.now()
    if (e.state === 'disabled' || e.state === 'ready') return
    e.readySince = performance.now()
    this.#set(e, 'ready', checker)
    // Only a path that comes back is failed back to (multipathd's rule), never one that was
    // ready all along: else every check would undo a switch the administrator made.
    this.#considerFailback()
  }

  /**
   * A connection, a probe or the identity check found the path unusable. `publicReason` is what
   * users other than root see (publicError: class and code); the reason itself may name a key
   * file or a PSK identity.
   */
  failed (index: number, reason: string, publicReason = 'failed', checker = reason): void {
    const e = this.#entries[index]!
    e.checker = checker
    e.publicChecker = checker === reason ? publicReason : `refused: ${publicReason}`
    e.checkedAt = Date.now()
    e.lastFailure = { at: Date.now(), reason, publicReason }
    if (e.state === 'disabled') return
    if (e.state !== 'failed') this.#set(e, 'failed', reason)
    if (this.selector === 'failover' && index === this.#active) this.#failOver()
  }

  /** The path showed another export: unusable until a probe finds the right one again. */
  refused (index: number, reason: string): void {
    this.#entries[index]!.verified = false
    this.failed(index, reason, 'another export (NBD_ERR_SERVER_CHANGED)', `refused: ${reason}`)
  }

  /** `fail path N` (1-based): unused until reinstated. */
  disable (path: number): void {
    const e = this.#entry(path)
    e.lastFailure = { at: Date.now(), reason: 'failed by the administrator', publicReason: 'failed by the administrator' }
    e.checker = 'not checked while disabled'
    e.publicChecker = e.checker
    e.checkedAt = undefined
    this.#set(e, 'disabled', 'fail path')
    if (this.selector === 'failover' && e.index === this.#active) this.#failOver()
  }

  /** `reinstate path N`: usable again once the checker finds it ready. */
  reinstate (path: number): void {
    const e = this.#entry(path)
    if (e.state !== 'disabled') return
    e.checker = 'reinstated: waiting for the checker'
    e.publicChecker = e.checker
    this.#set(e, 'failed', 'reinstated: waiting for the checker')
  }

  /** `switch path N`: make it the failover path now (it must be ready). */
  switchTo (path: number): void {
    const e = this.#entry(path)
    if (this.selector !== 'failover') throw new Error('switch path needs the failover path selector (round-robin uses every path)')
    if (e.state !== 'ready') throw new Error(`path ${path} is ${e.state}, not ready`)
    this.#switched = e.index !== 0
    this.#activate(e.index)
  }

  status (): PathStatus[] {
    return this.#entries.map((e) => ({
      path: e.index + 1,
      uri: e.uri,
      state: e.state,
      active: this.selector === 'failover' ? e.index === this.#active : this.#linksOn(e.index) > 0,
      connections: this.#linksOn(e.index),
      checker: e.checker,
      publicChecker: e.publicChecker,
      checkedAt: e.checkedAt === undefined ? undefined : new Date(e.checkedAt).toISOString(),
      lastFailure: e.lastFailure === undefined ? undefined : { at: new Date(e.lastFailure.at).toISOString(), reason: e.lastFailure.reason, publicReason: e.lastFailure.publicReason }
    }))
  }

  stop (): void {
    if (this.#failbackTimer !== null) clearTimeout(this.#failbackTimer)
    this.#failbackTimer = null
  }

  #entry (path: number): Entry {
    const e = this.#entries[path - 1]
    if (!Number.isInteger(path) || e === undefined) throw new Error(`there is no path ${path} (paths 1 to ${this.#entries.length})`)
    return e
  }

  #set (e: Entry, to: PathState, reason: string): void {
    const from = e.state
    if (from === to) return
    e.state = to
    this.emit('change', { path: e.index + 1, from, to, reason })
  }

  /** The active path is gone: the next ready one (in order after it) takes over. */
  #failOver (): void {
    this.#switched = false
    const n = this.#entries.length
    for (let step = 1; step < n; step++) {
      const e = this.#entries[(this.#active + step) % n]!
      if (e.state === 'ready' && e.verified) {
        this.#activate(e.index)
        return
      }
    }
  }

  #activate (index: number): void {
    if (index === this.#active) return
    this.#active = index
    this.emit('switch', index)
  }

  /** The first path is the preferred one: fail back to it as the policy says. */
  #considerFailback (): void {
    if (this.selector !== 'failover' || this.#active === 0 || this.#switched) return
    const first = this.#entries[0]!
    if (first.state !== 'ready' || !first.verified) return
    const policy = this.failback
    if (policy === 'manual') return
    const wait = policy === 'immediate' ? 0 : policy - (performance.now() - first.readySince)
    if (wait <= 0) {
      this.#activate(0)
      return
    }
    if (this.#failbackTimer !== null) return
    this.#failbackTimer = setTimeout(() => {
      this.#failbackTimer = null
      this.#considerFailback()
    }, wait)
    this.#failbackTimer.unref()
  }
}
