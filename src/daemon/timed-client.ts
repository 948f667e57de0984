/**
 * The client a mount is given, timing each I/O call the FUSE side makes (for `show mounts`'
 * p99 and the metrics' latency histogram), without a change to the client or to the FUSE
 * layer: NbdClient keeps its state in private fields, so no class can stand in for it, but a
 * Proxy can. It hands out, for the timed methods, a wrapper bound to the real client, and for
 * everything else the real client's own value (methods bound to it, so their private fields
 * resolve).
 *
 *   fuse ──► proxy.readInto(...) ──► client.readInto(...) ──settles──► record('read', ms, ok)
 */
import { performance } from 'node:perf_hooks'
import type { NbdClient } from '../client/nbd-client.ts'

/** The commands as the metrics name them. */
export type TimedCommand = 'read' | 'write' | 'flush' | 'trim' | 'zero' | 'cache'

const TIMED: Readonly<Record<string, TimedCommand>> = {
  read: 'read',
  readInto: 'read',
  write: 'write',
  flush: 'flush',
  trim: 'trim',
  punchHole: 'zero',
  writeZeroes: 'zero',
  cache: 'cache'
}

export type RecordLatency = (command: TimedCommand, ms: number, ok: boolean) => void

type AsyncMethod = (...args: unknown[]) => Promise<unknown>

export function timedClient (client: NbdClient, record: RecordLatency): NbdClient {
  const cache = new Map<PropertyKey, unknown>()
  for (const [name, command] of Object.entries(TIMED)) {
    const method = (Reflect.get(client, name) as AsyncMethod).bind(client)
    cache.set(name, (...args: unknown[]) => {
      const started = performance.now()
      return method(...args).then((value) => {
        record(command, performance.now() - started, true)
        return value
      }, (err: unknown) => {
        record(command, performance.now() - started, false)
        throw err
      })
    })
  }
  return new Proxy(client, {
    get (target, property) {
      const known = cache.get(property)
      if (known !== undefined) return known
      // Getters run with the real client as `this`, so its private fields resolve.
      const value: unknown = Reflect.get(target, property, target)
      if (typeof value !== 'function') return value
      const bound = (value as AsyncMethod).bind(target)
      cache.set(property, bound)
      return bound
    }
  })
}
