/**
 * Client options: what the caller may set, the defaults, and the checks that turn a URI or
 * an options bag into what the engine and the connector need.
 *
 * Who is trusted with what (libnbd's nbd_set_uri_allow_* in spirit):
 *
 *   source                              local files (tls-psk-file,   transport      TLS
 *                                       tls-certificates)            (tcp, unix)
 *   options the application passes      trusted                      trusted        trusted
 *   a URI                                refused unless               allowTransports allowTls
 *                                        allowLocalFile               (default all)  (default both)
 *
 * A URI may come from the application's own caller; it must not be able to make us read a
 * file of the application's choosing (a PSK file, a private key) or learn whether one exists.
 * `socket=` is a transport, as in libnbd: allowTransports governs it.
 *
 * Credentials mean TLS is required (QEMU's rule; libnbd never uses TLS for nbd://), unless
 * the caller asks for `tls: 'on'` (use it if the server offers it) explicitly.
 */
import { InvalidArgumentError, UriError } from '../errors.ts'
import type { BackoffOptions } from '../connector/backoff.ts'
import type { NegotiateTls } from '../connector/handshake/negotiate.ts'
import { loadTlsCredentials, type TlsMode, type TlsSettings } from '../transport/tls-credentials.ts'
import { parseNbdUri, type NbdAddress, type NbdUri } from '../protocol/uri.ts'
import { socketOpener, type OpenSocket } from '../transport/open-socket.ts'
import { MAX_IN_FLIGHT } from './engine/slots.ts'
import type { Failback, PathIdentity, PathSelector } from '../multipath/index.ts'

export interface NbdClientOptions {
  /** Where to connect, as an NBD URI (nbd://, nbds://, nbd+unix://, nbds+unix://). */
  readonly uri?: string
  /** Where to connect, when no URI is given. */
  readonly address?: NbdAddress
  /** The export to open, when no URI is given. @default '' */
  readonly exportName?: string
  /**
   * Opens the byte stream. Defaults to TCP or a Unix socket from the URI or address; inject
   * your own to run over any Duplex (a socketpair, a pipe to `nbdkit -s`).
   */
  readonly open?: OpenSocket
  /** Requests in flight per connection. @default 16 */
  readonly maxInFlight?: number
  /**
   * Connections to spread requests over; more than one needs a server that advertises
   * CAN_MULTI_CONN. 'auto': 4 when it does, else 1. @default 1
   */
  readonly connections?: number | 'auto'
  /** Meta contexts to select for blockStatus. @default ['base:allocation'] */
  readonly metaContexts?: readonly string[]
  /** Negotiate structured replies. @default true */
  readonly structuredReplies?: boolean
  /** Negotiate extended headers (64-bit lengths). @default true */
  readonly extendedHeaders?: boolean
  /** Bound on connect + handshake, ms. @default 10000 */
  readonly handshakeTimeout?: number
  /** A request without a reply this long declares the connection dead, ms (0 = never). @default 60000 */
  readonly requestTimeout?: number
  /**
   * How long requests wait for a lost server to come back before failing, ms. 0 fails them
   * at once (the connector still reconnects in the background, as QEMU does). @default 0
   */
  readonly reconnectDelay?: number
  /** How long the first connect keeps retrying, ms (0 = a single attempt). @default 0 */
  readonly openTimeout?: number
  /** Back-off between reconnect attempts. @default 1 s doubling to 16 s, ±20% */
  readonly backoff?: BackoffOptions
  /**
   * Largest READ or WRITE sent in one request; bigger ones are split. The server's own
   * maximum (NBD_INFO_BLOCK_SIZE) lowers it. @default 33554432 (32 MiB)
   */
  readonly maxRequestSize?: number
  /** Also learn every meta context the export offers (ExportInfo.availableContexts). @default false */
  readonly listContexts?: boolean
  /**
   * Bytes of acknowledged writes kept until a FLUSH covers them, to be written again after a
   * reconnect in case the server lost them (only for servers with a write cache, which
   * advertise FLUSH). 0 keeps nothing: a FLUSH after such a reconnect then fails with
   * NBD_ERR_DURABILITY instead of vouching for writes that may be gone. @default 33554432 (32 MiB)
   */
  readonly replayLog?: number
  /**
   * TLS: 'require' (fail rather than talk in clear), 'on' (use it when the server offers it),
   * 'off'. @default 'require' for nbds:// and whenever credentials are given, else 'off'
   */
  readonly tls?: TlsMode
  /** X.509: a directory with ca-cert.pem, and client-cert.pem + client-key.pem (the URI's tls-certificates). */
  readonly tlsCertificates?: string
  /** PSK: a file of `username:hexkey` lines (the URI's tls-psk-file). */
  readonly tlsPskFile?: string
  /** The PSK username (the URI's userinfo). @default the login name */
  readonly tlsUsername?: string
  /** The name the server's certificate must carry. @default the TCP host; none over a Unix socket */
  readonly tlsHostname?: string
  /** Verify the server's certificate. Only an explicit false turns it off. @default true */
  readonly tlsVerifyPeer?: boolean
  /**
   * Let the URI name local files (tls-psk-file, tls-certificates). Off by default, as in
   * libnbd: a URI may come from someone else. The options above are always trusted.
   * @default false
   */
  readonly allowLocalFile?: boolean
  /** Transports a URI may use. @default ['tcp', 'unix'] */
  readonly allowTransports?: readonly NbdAddress['transport'][]
  /**
   * TLS a URI may ask for: 'disable' refuses nbds:// URIs, 'require' refuses nbd:// ones.
   * @default 'allow'
   */
  readonly allowTls?: 'disable' | 'allow' | 'require'
  /**
   * More NBD URIs of the same export (multipath): with `uri`, the paths in order of
   * preference; alone, every path. Every option applies to every path.
   */
  readonly paths?: readonly string[]
  /** 'failover': one active path, the rest on standby (the default); 'round-robin': every path (each must allow multi-conn). */
  readonly pathSelector?: PathSelector
  /** Back to the first path once it is ready again: 'immediate' (default), 'manual', or after this many ms. */
  readonly failback?: Failback
  /** How often every path is checked, ms. @default 5000 */
  readonly pollingInterval?: number
  /**
   * What must match between paths besides the export itself: 'export' (the default), or also
   * 'description', or the SHA-256 of the bytes at { offset, length }.
   */
  readonly pathIdentity?: PathIdentity
  /** multipath.conf's no_path_retry: how long I/O waits when every path is down (reconnectDelay). */
  readonly noPathRetry?: number
  /** Aborts the connect. */
  readonly signal?: AbortSignal
}

/** Several paths to one export, each resolved on its own (its URI's TLS and address). */
/** The library's TLS options, under their own names: what a command line or a config may set. */
export type GivenTlsOptions = Pick<NbdClientOptions, 'tls' | 'tlsCertificates' | 'tlsPskFile' | 'tlsUsername' | 'tlsHostname' | 'tlsVerifyPeer'>

/**
 * The TLS settings that were given, as client options: the rest is left to the URI. Only
 * `tlsVerifyPeer: false` is an override (true is what a URI says unless it says otherwise).
 */
export function givenTls (settings: GivenTlsOptions): GivenTlsOptions {
  return {
    ...(settings.tls !== undefined && { tls: settings.tls }),
    ...(settings.tlsCertificates !== undefined && { tlsCertificates: settings.tlsCertificates }),
    ...(settings.tlsPskFile !== undefined && { tlsPskFile: settings.tlsPskFile }),
    ...(settings.tlsUsername !== undefined && { tlsUsername: settings.tlsUsername }),
    ...(settings.tlsHostname !== undefined && { tlsHostname: settings.tlsHostname }),
    ...(settings.tlsVerifyPeer === false && { tlsVerifyPeer: false })
  }
}

export interface ResolvedPaths {
  readonly uris: readonly string[]
  readonly endpoints: readonly ResolvedOptions[]
  readonly selector: PathSelector
  readonly failback: Failback
  readonly pollingInterval: number
  readonly identity: PathIdentity
}

export interface ResolvedOptions {
  readonly address: NbdAddress | undefined
  readonly exportName: string
  readonly open: OpenSocket
  readonly maxInFlight: number
  readonly connections: number | 'auto'
  readonly metaContexts: readonly string[]
  readonly structuredReplies: boolean
  readonly extendedHeaders: boolean
  readonly handshakeTimeout: number
  readonly requestTimeout: number
  readonly reconnectDelay: number
  readonly openTimeout: number
  readonly backoff: BackoffOptions | undefined
  readonly maxRequestSize: number
  readonly listContexts: boolean
  readonly replayLog: number
  /** The caller supplied `open` (there is no socket path of ours to watch). */
  readonly injectedOpen: boolean
  /** TLS to negotiate, with its credentials read; undefined: plaintext. */
  readonly tls: NegotiateTls | undefined
  readonly uri: NbdUri | undefined
  /** With more than one path: all of them (the first is this one). */
  readonly multipath: ResolvedPaths | undefined
}

function count (value: number | undefined, fallback: number, name: string, min: number, max: number): number {
  const n = value ?? fallback
  if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be an integer from ${min} to ${max}, not ${n}`)
  return n
}

function duration (value: number | undefined, fallback: number, name: string): number {
  const n = value ?? fallback
  if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError(`${name} must be a non-negative number of milliseconds, not ${n}`)
  return n
}

export function resolveOptions (target: string | NbdClientOptions, extra: NbdClientOptions = {}): ResolvedOptions {
  const options: NbdClientOptions = typeof target === 'string' ? { ...extra, uri: target } : { ...target, ...extra }
  const uris = [...(options.uri === undefined ? [] : [options.uri]), ...(options.paths ?? [])]
  if (uris.length <= 1) return resolveOne({ ...options, ...(uris[0] !== undefined && { uri: uris[0] }) }, undefined)
  const endpoints = uris.map((u) => resolveOne({ ...options, uri: u, paths: [] }, undefined))
  const selector = options.pathSelector ?? 'failover'
  if (selector !== 'failover' && selector !== 'round-robin') throw new InvalidArgumentError(`pathSelector is 'failover' or 'round-robin', not ${String(selector)}`)
  const failback = options.failback ?? 'immediate'
  if (failback !== 'immediate' && failback !== 'manual') duration(failback, 0, 'failback')
  const identity = options.pathIdentity ?? 'export'
  if (typeof identity === 'object') {
    count(identity.length, 0, 'pathIdentity.length', 1, 1 << 20)
    count(identity.offset, 0, 'pathIdentity.offset', 0, Number.MAX_SAFE_INTEGER)
  } else if (identity !== 'export' && identity !== 'description') {
    throw new InvalidArgumentError(`pathIdentity is 'export', 'description' or { offset, length }, not ${String(identity)}`)
  }
  const multipath: ResolvedPaths = {
    uris,
    endpoints,
    selector,
    failback,
    pollingInterval: duration(options.pollingInterval, 5000, 'pollingInterval') || 5000,
    identity
  }
  return { ...endpoints[0]!, multipath }
}

function resolveOne (options: NbdClientOptions, multipath: ResolvedPaths | undefined): ResolvedOptions {
  if (options.open !== undefined && options.paths !== undefined && options.paths.length > 0) {
    throw new InvalidArgumentError('an injected open function and several paths do not go together')
  }
  const uri = options.uri === undefined ? undefined : parseNbdUri(options.uri)
  if (uri !== undefined) checkUriAllowed(uri, options)
  const address = uri?.address ?? options.address
  if (options.open === undefined && address === undefined) {
    throw new InvalidArgumentError('say where to connect: a uri, an address, or an open function')
  }
  const tls = resolveTls(options, uri, address)
  const maxRequestSize = count(options.maxRequestSize, 32 * 1024 * 1024, 'maxRequestSize', 512, 64 * 1024 * 1024)
  return {
    address,
    exportName: uri?.exportName ?? options.exportName ?? '',
    open: options.open ?? socketOpener(address!),
    maxInFlight: count(options.maxInFlight, 16, 'maxInFlight', 1, MAX_IN_FLIGHT),
    connections: options.connections === 'auto' ? 'auto' : count(options.connections, 1, 'connections', 1, 64),
    metaContexts: options.metaContexts ?? ['base:allocation'],
    structuredReplies: options.structuredReplies ?? true,
    extendedHeaders: options.extendedHeaders ?? true,
    handshakeTimeout: duration(options.handshakeTimeout, 10_000, 'handshakeTimeout'),
    requestTimeout: duration(options.requestTimeout, 60_000, 'requestTimeout'),
    reconnectDelay: duration(options.reconnectDelay ?? options.noPathRetry, 0, 'reconnectDelay'),
    openTimeout: duration(options.openTimeout, 0, 'openTimeout'),
    backoff: options.backoff,
    maxRequestSize,
    listContexts: options.listContexts ?? false,
    replayLog: count(options.replayLog, 32 * 1024 * 1024, 'replayLog', 0, 1024 * 1024 * 1024),
    injectedOpen: options.open !== undefined,
    tls,
    uri,
    multipath
  }
}

/** The URI's TLS parameters, with the options bag's taking precedence. */
function resolveTls (options: NbdClientOptions, uri: NbdUri | undefined, address: NbdAddress | undefined): NegotiateTls | undefined {
  const settings: TlsSettings = {
    mode: 'off',
    ...pick('type', uri?.tlsType),
    ...pick('certificates', options.tlsCertificates ?? uri?.tlsCertificates),
    ...pick('pskFile', options.tlsPskFile ?? uri?.tlsPskFile),
    ...pick('username', options.tlsUsername ?? uri?.tlsUsername),
    ...pick('hostname', options.tlsHostname ?? uri?.tlsHostname),
    ...pick('verifyPeer', options.tlsVerifyPeer ?? uri?.tlsVerifyPeer)
  }
  const required = uri?.tls === 'require'
  if (required && options.tls !== undefined && options.tls !== 'require') {
    throw new InvalidArgumentError(`${options.uri ?? 'an nbds:// URI'} requires TLS; tls: '${options.tls}' contradicts it`)
  }
  const credentialsGiven = settings.certificates !== undefined || settings.pskFile !== undefined
  const mode: TlsMode = options.tls ?? (required || credentialsGiven ? 'require' : 'off')
  if (mode === 'off') return undefined
  const host = address?.transport === 'tcp' ? address.host.replace(/^\[|\]$/g, '') : undefined
  return { mode, credentials: loadTlsCredentials({ ...settings, mode }, host) }
}

/** What a URI may say, by the application's allow* options; the rest is refused up front. */
function checkUriAllowed (uri: NbdUri, options: NbdClientOptions): void {
  const transports = options.allowTransports ?? ['tcp', 'unix']
  if (!transports.includes(uri.address.transport)) {
    throw new UriError(`${uri.address.transport === 'unix' ? 'Unix-socket' : 'TCP'} URIs are not allowed here (allowTransports)`)
  }
  const allowTls = options.allowTls ?? 'allow'
  if (allowTls === 'disable' && uri.tls === 'require') throw new UriError('TLS URIs (nbds://) are not allowed here (allowTls)')
  if (allowTls === 'require' && uri.tls !== 'require') throw new UriError('only TLS URIs (nbds://) are allowed here (allowTls)')
  if (options.allowLocalFile !== true) {
    // Refused before the file is touched: nothing is learnt about it.
    const named = uri.tlsPskFile !== undefined ? 'tls-psk-file' : uri.tlsCertificates !== undefined ? 'tls-certificates' : undefined
    if (named !== undefined) {
      throw new UriError(`the URI names a local file (${named}), which is not allowed here: pass it as an option (tlsPskFile, tlsCertificates), or set allowLocalFile: true when the URI is trusted`)
    }
  }
}

function pick<K extends string, V> (key: K, value: V | undefined): { [P in K]?: V } {
  return (value === undefined ? {} : { [key]: value }) as { [P in K]?: V }
}
