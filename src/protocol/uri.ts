/**
 * NBD URIs (NetworkBlockDevice/nbd doc/uri.md, plus libnbd's tls-certificates and
 * tls-psk-file).
 *
 *   nbd://host[:port]/export            TCP, TLS if the server offers it
 *   nbds://[user@]host[:port]/export    TCP, TLS required
 *   nbd+unix:///export?socket=PATH      Unix socket
 *   nbds+unix://[user@]/export?socket=PATH
 *
 * The export name is the path without its leading "/", percent-decoded ("nbd://h//disk" names
 * "/disk"). The port defaults to 10809. Query parameters the parser does not understand are an
 * error: the spec says they SHOULD be diagnosed, and silently ignoring a misspelt
 * "tls-verify-peer" would be a security bug.
 */
import { UriError } from '../errors.ts'
import { NBD_DEFAULT_PORT } from './constants.ts'

export type TlsMode = 'off' | 'on' | 'require'
export type TlsType = 'anon' | 'x509' | 'psk'

export type NbdAddress =
  | { readonly transport: 'tcp', readonly host: string, readonly port: number }
  | { readonly transport: 'unix', readonly path: string }

export interface NbdUri {
  readonly address: NbdAddress
  readonly exportName: string
  /** 'require' for nbds*, 'on' (opportunistic) for nbd* as the spec allows. */
  readonly tls: TlsMode
  readonly tlsType?: TlsType
  readonly tlsHostname?: string
  readonly tlsVerifyPeer?: boolean
  readonly tlsCertificates?: string
  readonly tlsPskFile?: string
  /** The userinfo part: the TLS (PSK) username. */
  readonly tlsUsername?: string
}

const SCHEMES: Readonly<Record<string, { transport: 'tcp' | 'unix', tls: TlsMode }>> = {
  'nbd:': { transport: 'tcp', tls: 'on' },
  'nbds:': { transport: 'tcp', tls: 'require' },
  'nbd+unix:': { transport: 'unix', tls: 'on' },
  'nbds+unix:': { transport: 'unix', tls: 'require' }
}

const KNOWN_QUERY = ['socket', 'tls-type', 'tls-hostname', 'tls-verify-peer', 'tls-certificates', 'tls-psk-file'] as const

function decode (text: string, what: string): string {
  try {
    return decodeURIComponent(text)
  } catch {
    throw new UriError(`${what} "${text}" has a malformed percent-escape`)
  }
}

export function parseNbdUri (text: string): NbdUri {
  // "nbds+unix://alice@/?socket=..." (a PSK user over a Unix socket, as libnbd writes it) is
  // valid RFC 3986, but WHATWG URL refuses credentials without a host: take them out first.
  const hostless = /^([a-z][a-z0-9+.-]*:\/\/)([^@/?#]*)@(?=[/?#]|$)/i.exec(text)
  let url: URL
  try {
    url = new URL(hostless === null ? text : hostless[1]! + text.slice(hostless[0].length))
  } catch {
    throw new UriError(`"${text}" is not a URI`)
  }
  const userinfo = hostless === null ? url.username : hostless[2]!
  if (hostless !== null && hostless[2]!.includes(':')) throw new UriError(`"${text}": passwords do not belong in NBD URIs`)
  const scheme = SCHEMES[url.protocol.toLowerCase()]
  if (scheme === undefined) {
    throw new UriError(`unsupported scheme "${url.protocol}" in "${text}": use nbd://, nbds://, nbd+unix:// or nbds+unix://`)
  }

  // Parsed by hand: URLSearchParams would turn "+" into a space, which RFC 3986 does not,
  // and a socket path may well contain "+".
  const params = new Map<string, string>()
  for (const pair of url.search.slice(1).split('&')) {
    if (pair === '') continue
    const eq = pair.indexOf('=')
    const key = decode(eq < 0 ? pair : pair.slice(0, eq), 'query parameter')
    const value = decode(eq < 0 ? '' : pair.slice(eq + 1), `value of ${key}`)
    if (!(KNOWN_QUERY as readonly string[]).includes(key)) {
      throw new UriError(`unknown query parameter "${key}" in "${text}" (known: ${KNOWN_QUERY.join(', ')})`)
    }
    if (params.has(key)) throw new UriError(`query parameter "${key}" given twice in "${text}"`)
    params.set(key, value)
  }
  const query = (key: (typeof KNOWN_QUERY)[number]): string | undefined => params.get(key)

  let address: NbdAddress
  const socket = query('socket')
  if (scheme.transport === 'unix') {
    if (socket === undefined || socket === '') throw new UriError(`"${text}" needs ?socket=PATH for a Unix socket`)
    if (url.host !== '') throw new UriError(`"${text}": a Unix-socket URI takes no host or port`)
    address = { transport: 'unix', path: socket }
  } else {
    if (socket !== undefined) throw new UriError(`"${text}": ?socket= only applies to nbd+unix:// and nbds+unix://`)
    // URL keeps IPv6 literals bracketed; net.connect wants them bare.
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1')
    if (host === '') throw new UriError(`"${text}" names no host`)
    const port = url.port === '' ? NBD_DEFAULT_PORT : Number(url.port)
    if (!Number.isInteger(port) || port <= 0 || port > 65535) throw new UriError(`bad port in "${text}"`)
    address = { transport: 'tcp', host, port }
  }

  // "nbd+unix://?socket=..." (nbdkit's $uri) has an empty path; "nbd://h/" has "/".
  const path = url.pathname.startsWith('/') ? url.pathname.slice(1) : url.pathname
  const exportName = decode(path, 'export name')

  const tlsType = query('tls-type')
  if (tlsType !== undefined && tlsType !== 'anon' && tlsType !== 'x509' && tlsType !== 'psk') {
    throw new UriError(`tls-type must be anon, x509 or psk, not "${tlsType}"`)
  }
  const verify = query('tls-verify-peer')
  if (verify !== undefined && !['0', '1', 'false', 'true'].includes(verify)) {
    throw new UriError(`tls-verify-peer must be 0 or 1, not "${verify}"`)
  }
  const username = userinfo === '' ? undefined : decode(userinfo, 'user name')
  if (url.password !== '') throw new UriError(`"${text}": passwords do not belong in NBD URIs`)

  return {
    address,
    exportName,
    tls: scheme.tls,
    ...(tlsType !== undefined && { tlsType }),
    ...(query('tls-hostname') !== undefined && { tlsHostname: query('tls-hostname')! }),
    ...(verify !== undefined && { tlsVerifyPeer: verify === '1' || verify === 'true' }),
    ...(query('tls-certificates') !== undefined && { tlsCertificates: query('tls-certificates')! }),
    ...(query('tls-psk-file') !== undefined && { tlsPskFile: query('tls-psk-file')! }),
    ...(username !== undefined && { tlsUsername: username })
  }
}

/** The canonical URI for an address and export, as `nbdts info` prints it. */
export function formatNbdUri (address: NbdAddress, exportName: string, tls: boolean): string {
  const name = encodeURIComponent(exportName).replace(/%2F/g, '/')
  if (address.transport === 'unix') {
    return `nbd${tls ? 's' : ''}+unix:///${name}?socket=${encodeURIComponent(address.path).replace(/%2F/g, '/')}`
  }
  const host = address.host.includes(':') ? `[${address.host}]` : address.host
  const port = address.port === NBD_DEFAULT_PORT ? '' : `:${address.port}`
  return `nbd${tls ? 's' : ''}://${host}${port}/${name}`
}
