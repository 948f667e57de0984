/**
 * Liveness, per link with requests on it: is the server still there? Any byte that moves,
 * either way, says yes; so does any reply.
 *
 *   quiet for ≥ timeout/2 ──► 'probe'  a cheap request whose answer shows the server is there
 *                                      (a slow command on a live server is waited for)
 *   quiet for ≥ timeout   ──► 'dead'   the link drains: nothing more is sent there, and what is
 *                                      on it stays until the server answers or closes
 *
 * "Quiet" counts from the later of the last byte moved and the oldest request's send, so a
 * request sent after a long idle spell gets a whole timeout.
 */
import type { Link } from './link.ts'

export type Verdict = 'probe' | 'dead'

export function * checkLiveness (links: Iterable<Link>, timeout: number, now: number): Generator<[Link, Verdict]> {
  for (const link of [...links]) {
    if (link.progressed(now) || !link.may('probe') || link.inFlight === 0) continue
    const quiet = now - Math.max(link.lastProgressAt, link.table.oldestSentAt())
    if (quiet >= timeout) yield [link, 'dead']
    else if (quiet >= timeout / 2 && !link.probing) yield [link, 'probe']
  }
}
