/**
 * What SRC and DST name, as nbdcopy reads them:
 *
 *   nbd://…, nbds://…, nbd+unix://…, nbds+unix://…   an NBD export
 *   [ CMD … ]                                          a server started with socket activation
 *   -                                                  stdin (SRC) or stdout (DST)
 *   null:                                              discard (DST only)
 *   anything else                                      a local file or block device; a FIFO or
 *                                                      character device is read/written in order
 *
 * The source is opened first: a destination file is sized from it.
 */
import { createReadStream, createWriteStream, type Stats } from 'node:fs'
import { startServerCommand, type ServerCommand } from '../activation/index.ts'
import { InvalidArgumentError } from '../errors.ts'
import type { CopyDestination, CopySource } from './endpoint.ts'
import { fileDestination, fileSource } from './file-endpoint.ts'
import { nbdDestination, nbdSource } from './nbd-endpoint.ts'
import { nullDestination } from './null-endpoint.ts'
import { pipeDestination, pipeSource } from './pipe-endpoint.ts'

export type EndpointSpec =
  | { readonly kind: 'nbd', readonly uri: string }
  | { readonly kind: 'command', readonly argv: readonly string[] }
  | { readonly kind: 'pipe' }
  | { readonly kind: 'null' }
  | { readonly kind: 'file', readonly path: string }

export interface EndpointOptions {
  readonly connections: number
  readonly requests: number
  /** For NBD URIs; a server we started cannot come back, so commands get 0. */
  readonly reconnectDelay: number
  readonly extents: boolean
  readonly signal?: AbortSignal
}

const NBD_URI = /^nbds?(\+unix)?:\/\//

export function parseEndpoint (text: string, command: readonly string[] | undefined): EndpointSpec {
  if (command !== undefined) return { kind: 'command', argv: command }
  if (text === '-') return { kind: 'pipe' }
  if (text === 'null:') return { kind: 'null' }
  if (NBD_URI.test(text)) return { kind: 'nbd', uri: text }
  if (text === '') throw new InvalidArgumentError('an empty SOURCE or DESTINATION')
  return { kind: 'file', path: text }
}

export function describeEndpoint (spec: EndpointSpec): string {
  switch (spec.kind) {
    case 'nbd': return spec.uri
    case 'command': return `[ ${spec.argv.join(' ')} ]`
    case 'pipe': return '-'
    case 'null': return 'null:'
    case 'file': return spec.path
  }
}

export interface OpenedEndpoints {
  readonly source: CopySource
  readonly destination: CopyDestination
  /** Closes both ends and stops any server we started. */
  close: () => Promise<void>
}

export async function openEndpoints (src: EndpointSpec, dst: EndpointSpec, options: EndpointOptions): Promise<OpenedEndpoints> {
  if (src.kind === 'null') throw new InvalidArgumentError('null: can only be the destination')
  const servers: ServerCommand[] = []
  const closers: Array<() => Promise<void>> = []
  const close = async (): Promise<void> => {
    await Promise.allSettled(closers.splice(0).reverse().map((c) => c()))
    await Promise.allSettled(servers.splice(0).map((s) => s.stop()))
  }
  try {
    const source = await openSource(src, options, servers)
    closers.push(source.close)
    const destination = await openDestination(dst, source.size, options, servers)
    closers.push(destination.close)
    return { source, destination, close }
  } catch (err) {
    // The server command that failed to start, if one did, says why.
    const last = servers.at(-1)
    const why = last === undefined ? err : await last.explain(err)
    await close()
    throw why
  }
}

async function nbdTarget (spec: EndpointSpec & { kind: 'nbd' | 'command' }, options: EndpointOptions, servers: ServerCommand[]): Promise<{ uri: string, open?: ServerCommand['open'], reconnectDelay: number }> {
  if (spec.kind === 'nbd') return { uri: spec.uri, reconnectDelay: options.reconnectDelay }
  const server = await startServerCommand(spec.argv, options.signal === undefined ? {} : { signal: options.signal })
  servers.push(server)
  return { uri: server.uri, open: server.open, reconnectDelay: 0 }
}

async function openSource (spec: EndpointSpec, options: EndpointOptions, servers: ServerCommand[]): Promise<CopySource> {
  const name = describeEndpoint(spec)
  switch (spec.kind) {
    case 'nbd':
    case 'command': {
      const target = await nbdTarget(spec, options, servers)
      return await nbdSource({ name, ...target, connections: options.connections, requests: options.requests, extents: options.extents, ...signalOf(options) })
    }
    case 'pipe': return pipeSource('stdin', process.stdin)
    case 'file': {
      const stats = await statOrUndefined(spec.path)
      if (stats === undefined) throw new InvalidArgumentError(`${spec.path}: no such file`)
      if (stats.isFile() || stats.isBlockDevice()) return await fileSource(spec.path, stats)
      if (stats.isDirectory()) throw new InvalidArgumentError(`${spec.path} is a directory`)
      return pipeSource(spec.path, createReadStream(spec.path))
    }
    case 'null': throw new InvalidArgumentError('null: can only be the destination')
  }
}

async function openDestination (spec: EndpointSpec, sourceSize: number | undefined, options: EndpointOptions, servers: ServerCommand[]): Promise<CopyDestination> {
  const name = describeEndpoint(spec)
  switch (spec.kind) {
    case 'nbd':
    case 'command': {
      const target = await nbdTarget(spec, options, servers)
      return await nbdDestination({ name, ...target, connections: options.connections, requests: options.requests, extents: false, ...signalOf(options) })
    }
    case 'pipe': return pipeDestination('stdout', process.stdout)
    case 'null': return nullDestination()
    case 'file': {
      const stats = await statOrUndefined(spec.path)
      if (stats === undefined || stats.isFile() || stats.isBlockDevice()) return await fileDestination(spec.path, stats, sourceSize)
      if (stats.isDirectory()) throw new InvalidArgumentError(`${spec.path} is a directory`)
      return pipeDestination(spec.path, createWriteStream(spec.path, { flags: 'a' }), true)
    }
  }
}

function signalOf (options: EndpointOptions): { signal?: AbortSignal } {
  return options.signal === undefined ? {} : { signal: options.signal }
}

async function statOrUndefined (path: string): Promise<Stats | undefined> {
  try {
    // Imported here: a copy that names no file has no use for node:fs/promises (see file-endpoint.ts).
    const { stat } = await import('node:fs/promises')
    return await stat(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
}
