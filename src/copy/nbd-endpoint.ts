/**
 * An NBD export as either end of a copy: one NbdClient per connection, as nbdcopy keeps one
 * libnbd handle per connection. The first connection says whether the server allows
 * multi-conn; only then are the others opened (while the first stays open, so a server that
 * serves one client at a time, or exits after its last, still works).
 *
 *   lane 0 ─► client 1 ─► connection 1        every client reconnects on its own
 *   lane 1 ─► client 2 ─► connection 2        (reconnectDelay); a FLUSH on one covers
 *   ...                                        all of them (that is what multi-conn means)
 */
import { NbdClient } from '../client/nbd-client.ts'
import type { NbdClientOptions } from '../client/options.ts'
import { NotSupportedError } from '../errors.ts'
import type { OpenSocket } from '../transport/open-socket.ts'
import type { CopyDestination, CopySource } from './endpoint.ts'

export interface NbdEndpointOptions {
  readonly name: string
  readonly uri: string
  readonly open?: OpenSocket
  /** Connections wanted; 1 unless the server advertises multi-conn. */
  readonly connections: number
  /** Requests in flight per connection. */
  readonly requests: number
  readonly reconnectDelay: number
  /** Ask for base:allocation (sources). */
  readonly extents: boolean
  readonly signal?: AbortSignal
}

async function connectAll (options: NbdEndpointOptions): Promise<NbdClient[]> {
  const connectOptions: NbdClientOptions = {
    // The URIs come from our own command line, typed by our user (as nbdcopy takes them): they
    // may name local files (tls-psk-file, tls-certificates, sockets).
    allowLocalFile: true,
    maxInFlight: options.requests,
    reconnectDelay: options.reconnectDelay,
    metaContexts: options.extents ? ['base:allocation'] : [],
    ...(options.open !== undefined && { open: options.open }),
    ...(options.signal !== undefined && { signal: options.signal })
  }
  const first = await NbdClient.connect(options.uri, connectOptions)
  const wanted = first.canMultiConn ? options.connections : 1
  if (wanted === 1) return [first]
  const rest = await Promise.allSettled(Array.from({ length: wanted - 1 }, () => NbdClient.connect(options.uri, connectOptions)))
  const clients = [first, ...rest.flatMap((r) => r.status === 'fulfilled' ? [r.value] : [])]
  const failed = rest.find((r) => r.status === 'rejected')
  if (failed !== undefined) {
    await closeAll(clients)
    throw failed.reason
  }
  return clients
}

async function closeAll (clients: readonly NbdClient[]): Promise<void> {
  // close() drains and sends NBD_CMD_DISC; a server that is gone is destroyed instead.
  await Promise.all(clients.map(async (c) => {
    const timer = setTimeout(() => { c.destroy() }, 5000)
    try {
      await c.close()
    } catch {
      c.destroy()
    } finally {
      clearTimeout(timer)
    }
  }))
}

function reconnects (clients: readonly NbdClient[]): () => number {
  return () => clients.reduce((n, c) => n + c.stats().reconnects, 0)
}

function preferred (client: NbdClient): number | undefined {
  return client.info.blockSize?.preferred
}

export async function nbdSource (options: NbdEndpointOptions): Promise<CopySource> {
  const clients = await connectAll(options)
  const first = clients[0]!
  const withExtents = options.extents && first.metaContexts.includes('base:allocation')
  return {
    name: options.name,
    size: first.size,
    connections: clients.length,
    preferredBlockSize: preferred(first),
    readInto: (buffer, offset, lane, signal) => clients[lane % clients.length]!.readInto(buffer, offset, { signal }),
    ...(withExtents && { extents: (offset: number, length: number, signal: AbortSignal) => first.map(length, offset, { signal }) }),
    reconnects: reconnects(clients),
    close: () => closeAll(clients)
  }
}

export async function nbdDestination (options: NbdEndpointOptions): Promise<CopyDestination> {
  const clients = await connectAll(options)
  const first = clients[0]!
  if (first.isReadOnly) {
    await closeAll(clients)
    throw new NotSupportedError(`${options.name} is read-only`)
  }
  const pick = (lane: number): NbdClient => clients[lane % clients.length]!
  return {
    name: options.name,
    size: first.size,
    connections: clients.length,
    preferredBlockSize: preferred(first),
    seekable: true,
    startsZero: false,
    write: (data, offset, lane, signal) => pick(lane).write(data, offset, { signal }),
    // punchHole: reads back as zeroes on every server, deallocated where it can be
    // (WRITE_ZEROES without NO_HOLE; written zeroes where there is no WRITE_ZEROES). TRIM is
    // never used: it promises nothing about the contents.
    zero: (offset, length, lane, request, signal) => request.allocated
      ? pick(lane).writeZeroes(length, offset, { noHole: true, signal })
      : pick(lane).punchHole(length, offset, { signal }),
    flush: async (signal) => {
      if (first.canFlush) await first.flush({ signal })
    },
    reconnects: reconnects(clients),
    close: () => closeAll(clients)
  }
}
