/**
 * The TLS handshake over an open connection, right after the server ACKed NBD_OPT_STARTTLS.
 * TLS 1.2 and 1.3 (the NBD spec's floor); PSK suites named for TLS 1.2, where OpenSSL leaves
 * them off by default (TLS 1.3 derives its PSK suites from the callback).
 *
 * A PSK session is authenticated by the PSK and by nothing else. A TLS 1.3 server may ignore
 * the offered PSK and authenticate with a certificate instead; Node would then check that
 * certificate against its CA store and call it authorized. So a PSK connection is refused
 * when the server shows any certificate, and accepted only when the handshake really used the
 * key: a PSK cipher suite (TLS 1.2), or the PSK resumption path (TLS 1.3, where OpenSSL
 * reports the external PSK as a resumed session).
 */
import type { ConnectionOptions, PeerCertificate, TLSSocket } from 'node:tls'
import type { Duplex } from 'node:stream'
import { AbortedError, TlsError } from '../errors.ts'
import type { TlsCredentials } from './tls-credentials.ts'

const PSK_CIPHERS = [
  'PSK-AES256-GCM-SHA384', 'PSK-AES128-GCM-SHA256', 'PSK-CHACHA20-POLY1305',
  'ECDHE-PSK-AES256-CBC-SHA384', 'ECDHE-PSK-AES128-CBC-SHA256', 'ECDHE-PSK-CHACHA20-POLY1305',
  'TLS_AES_256_GCM_SHA384', 'TLS_AES_128_GCM_SHA256', 'TLS_CHACHA20_POLY1305_SHA256'
].join(':')

/**
 * node:tls (and the node:crypto it loads) only when a connection uses TLS: loading it costs a
 * command such as `nbdts info` over a Unix socket a tenth of its start-up time.
 */
const tls = (): typeof import('node:tls') => process.getBuiltinModule('node:tls')

const CERTIFICATE_INSTEAD_OF_PSK = 'the server authenticated with a certificate instead of the PSK'

export function tlsOptions (creds: TlsCredentials, socket: Duplex): ConnectionOptions {
  const base: ConnectionOptions = { socket, minVersion: 'TLSv1.2' }
  if (creds.kind === 'psk') {
    return {
      ...base,
      ciphers: PSK_CIPHERS,
      pskCallback: () => ({ psk: creds.key, identity: creds.identity }),
      // Node hands over the server's certificate ({} when it sent none); under PSK any is refused.
      checkServerIdentity: (_name: string, cert: PeerCertificate) => showsCertificate(cert)
        ? new Error(CERTIFICATE_INSTEAD_OF_PSK)
        : undefined
    }
  }
  const hostname = creds.hostname
  return {
    ...base,
    ...(creds.ca !== undefined && { ca: creds.ca }),
    ...(creds.cert !== undefined && { cert: creds.cert, key: creds.key }),
    rejectUnauthorized: creds.verifyPeer,
    // SNI only carries DNS names.
    ...(hostname !== undefined && !/^[\d.:]+$/.test(hostname) && { servername: hostname }),
    checkServerIdentity: (_name: string, cert: PeerCertificate) => {
      if (!creds.verifyPeer || hostname === undefined) return undefined
      return tls().checkServerIdentity(hostname, cert)
    }
  }
}

/** Resolves with the TLS socket once the handshake is done; TlsError on any failure. */
export function startTls (raw: Duplex, creds: TlsCredentials, signal: AbortSignal): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason instanceof Error ? signal.reason : new AbortedError(signal.reason))
      return
    }
    const socket = tls().connect(tlsOptions(creds, raw))
    const cleanup = (): void => {
      socket.off('secureConnect', onSecure)
      socket.off('error', onError)
      socket.off('close', onClose)
      signal.removeEventListener('abort', onAbort)
    }
    const onSecure = (): void => {
      cleanup()
      const why = creds.kind === 'psk' ? notPskAuthenticated(socket) : undefined
      if (why !== undefined) {
        socket.destroy()
        reject(new TlsError(`the server did not authenticate with the PSK (${why}): refusing the connection`))
        return
      }
      resolve(socket)
    }
    const onError = (err: NodeJS.ErrnoException): void => {
      cleanup()
      socket.destroy()
      reject(describeTlsFailure(err, creds))
    }
    const onClose = (): void => {
      cleanup()
      reject(new TlsError(`the server closed the connection during the TLS handshake (${creds.description})`))
    }
    const onAbort = (): void => {
      cleanup()
      socket.destroy()
      reject(signal.reason instanceof Error ? signal.reason : new AbortedError(signal.reason))
    }
    socket.once('secureConnect', onSecure)
    socket.once('error', onError)
    socket.once('close', onClose)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

function showsCertificate (cert: PeerCertificate | undefined): boolean {
  return cert !== undefined && cert !== null && Object.keys(cert).length > 0
}

/** Why a finished handshake was not authenticated by our PSK, or undefined if it was. */
export function notPskAuthenticated (socket: TLSSocket): string | undefined {
  if (showsCertificate(socket.getPeerCertificate())) return 'it sent a certificate'
  const protocol = socket.getProtocol()
  const cipher = socket.getCipher()
  if (protocol === 'TLSv1.3') return socket.isSessionReused() ? undefined : 'TLS 1.3 without the PSK'
  if (protocol === 'TLSv1.2') return /(^|-)PSK-/.test(cipher.name) ? undefined : `cipher suite ${cipher.name} is not a PSK suite`
  return `unexpected protocol ${protocol ?? 'none'}`
}

/** OpenSSL's codes, said in words a user can act on. */
export function describeTlsFailure (err: NodeJS.ErrnoException, creds: TlsCredentials): TlsError {
  const code = err.code ?? ''
  let why: string
  const dropped = code === 'ECONNRESET' || code === 'EPIPE' || /socket disconnected/.test(err.message)
  const certificateProblem = /CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|VERIFY/.test(code)
  if (creds.kind === 'psk' && (certificateProblem || err.message === CERTIFICATE_INSTEAD_OF_PSK)) why = 'the server authenticated with a certificate instead of the PSK (a server without our key, or someone in the middle)'
  else if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') why = `the server's certificate is not for ${creds.kind === 'x509' ? creds.hostname ?? '?' : '?'} (set tls-hostname if the name differs)`
  else if (certificateProblem) why = `the server's certificate could not be verified (${code}); check the CA in ca-cert.pem`
  else if (creds.kind === 'psk' && (dropped || /DECRYPT|BAD_RECORD_MAC|ALERT|PSK|HANDSHAKE/.test(code + err.message))) why = `the PSK handshake failed (wrong key for ${creds.identity}, or an unknown username)`
  else if (/CERTIFICATE_REQUIRED|ALERT_BAD_CERTIFICATE|ALERT_UNKNOWN_CA|ALERT_HANDSHAKE_FAILURE/.test(code)) why = 'the server refused our certificate (or the lack of one)'
  else if (dropped) why = 'the server dropped the connection during the TLS handshake'
  else why = `the TLS handshake failed${code === '' ? '' : ` (${code})`}`
  return new TlsError(`${why}: ${err.message}`, { cause: err })
}
