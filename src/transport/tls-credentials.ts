/**
 * TLS credentials, read once from where libnbd and QEMU keep them:
 *
 *   X.509  a directory with ca-cert.pem (else the system's CAs), and client-cert.pem +
 *          client-key.pem when the server wants a client certificate
 *   PSK    a file of `username:hexkey` lines (nbdkit --tls-psk, psktool), and a username
 *          (the URI's userinfo, tls-username, or the login name, as libnbd does)
 *
 * The server is verified unless verification is turned off explicitly. Its name is checked
 * against tls-hostname, or the TCP host. Over a Unix socket there is no host to check unless
 * tls-hostname names one; the chain must then lead to the directory's own ca-cert.pem, since
 * the system's CAs vouch for names only, and any certificate they signed would do.
 *
 * Errors name the file they are about (the caller gave it) but never tell apart "missing"
 * from "unreadable", or quote what a file holds: a path may come from someone probing files.
 */
import { existsSync, readFileSync } from 'node:fs'
import { userInfo } from 'node:os'
import path from 'node:path'
import { TlsError } from '../errors.ts'

export type TlsMode = 'off' | 'on' | 'require'

/** What the caller said about TLS (URI query parameters or options). */
export interface TlsSettings {
  readonly mode: TlsMode
  readonly type?: 'x509' | 'psk' | 'anon'
  readonly certificates?: string
  readonly pskFile?: string
  readonly username?: string
  readonly hostname?: string
  readonly verifyPeer?: boolean
}

export type TlsCredentials =
  | {
    readonly kind: 'x509'
    /** Trusted CAs; undefined: the system's. */
    readonly ca: Buffer | undefined
    readonly cert: Buffer | undefined
    readonly key: Buffer | undefined
    readonly verifyPeer: boolean
    /** The name the certificate must carry; undefined: not checked (Unix socket, no tls-hostname). */
    readonly hostname: string | undefined
    readonly description: string
  }
  | {
    readonly kind: 'psk'
    readonly identity: string
    readonly key: Buffer
    readonly description: string
  }

/** Debian's bundle; Node's own Mozilla list is used where it is missing. */
const SYSTEM_CA_BUNDLES = ['/etc/ssl/certs/ca-certificates.crt', '/etc/pki/tls/certs/ca-bundle.crt']

/** Reads the credentials `settings` name. `host` is the TCP host, undefined over a Unix socket. */
export function loadTlsCredentials (settings: TlsSettings, host: string | undefined): TlsCredentials {
  if (settings.type === 'anon') throw new TlsError('anonymous TLS (tls-type=anon) is not supported: it cannot authenticate the server')
  if (settings.pskFile !== undefined && settings.type !== 'x509') return loadPsk(settings.pskFile, settings.username)
  if (settings.type === 'psk') throw new TlsError('tls-type=psk needs a tls-psk-file')
  return loadX509(settings, host)
}

function loadPsk (file: string, username: string | undefined): TlsCredentials {
  const text = readCredential(file, 'PSK file')
  const identity = username ?? userInfo().username
  let found: Buffer | undefined
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) continue
    const colon = line.indexOf(':')
    const hex = line.slice(colon + 1)
    if (colon <= 0 || !/^(?:[0-9a-fA-F]{2})+$/.test(hex)) {
      throw new TlsError(`${file} is not a PSK file (lines of "username:hexkey", as psktool writes them)`)
    }
    if (line.slice(0, colon) === identity) found = Buffer.from(hex, 'hex')
  }
  if (found === undefined) {
    // The login name is ours, not the caller's to learn.
    throw new TlsError(`username ${username ?? '(the login name)'} was not found in the PSK file ${file}`)
  }
  return { kind: 'psk', identity, key: found, description: `PSK as ${identity}` }
}

function loadX509 (settings: TlsSettings, host: string | undefined): TlsCredentials {
  const dir = settings.certificates
  const at = (name: string): string | undefined => {
    if (dir === undefined) return undefined
    const file = path.join(dir, name)
    return existsSync(file) ? file : undefined
  }
  if (dir !== undefined && !existsSync(dir)) throw new TlsError(`cannot read the TLS certificates directory ${dir}`)
  const ownCa = at('ca-cert.pem')
  const verifyPeer = settings.verifyPeer ?? true
  const hostname = settings.hostname ?? host
  if (verifyPeer && ownCa === undefined && hostname === undefined) {
    throw new TlsError('over a Unix socket, X.509 needs ca-cert.pem in tls-certificates or a tls-hostname: the system\'s CAs vouch for names, and there is no name to check')
  }
  const caFile = ownCa ?? SYSTEM_CA_BUNDLES.find((f) => existsSync(f))
  const certFile = at('client-cert.pem')
  const keyFile = at('client-key.pem')
  if ((certFile === undefined) !== (keyFile === undefined)) {
    throw new TlsError(`${dir}: client-cert.pem and client-key.pem go together (found only ${certFile ?? keyFile})`)
  }
  return {
    kind: 'x509',
    ca: caFile === undefined ? undefined : Buffer.from(readCredential(caFile, 'CA certificate')),
    cert: certFile === undefined ? undefined : Buffer.from(readCredential(certFile, 'client certificate')),
    key: keyFile === undefined ? undefined : Buffer.from(readCredential(keyFile, 'client key')),
    verifyPeer,
    hostname,
    description: `X.509${caFile === undefined ? '' : ` (CA ${caFile})`}${certFile === undefined ? '' : ', with a client certificate'}${verifyPeer ? '' : ', server NOT verified'}`
  }
}

function readCredential (file: string, what: string): string {
  try {
    return readFileSync(file, 'utf8')
  } catch {
    // No errno, not even as the cause: ENOENT against EACCES tells whether a file exists.
    throw new TlsError(`cannot read the ${what} ${file}`)
  }
}
