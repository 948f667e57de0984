/**
 * The TLS handshake over an open connection, right after the server ACKed NBD_OPT_STARTTLS.
 * TLS 1.2 and 1.3 (the NBD spec's floor); PSK suites named for TLS 1.2, where OpenSSL leaves
 * them off by default (TLS 1.3 derives its PSK suites from the callback).
 */
import { checkServerIdentity, connect, type ConnectionOptions, type PeerCertificate, type TLSSocket } from 'node:tls'
import type { Duplex } from 'node:stream'
import { AbortedError, TlsError } from '../errors.ts'
import type { TlsCredentials } from './tls-credentials.ts'

const PSK_CIPHERS = [
  'PSK-AES256-GCM-SHA384', 'PSK-AES128-GCM-SHA256', 'PSK-CHACHA20-POLY1305',
  'ECDHE-PSK-AES256-CBC-SHA384', 'ECDHE-PSK-AES128-CBC-SHA256', 'ECDHE-PSK-CHACHA20-POLY1305',
  'TLS_AES_256_GCM_SHA384', 'TLS_AES_128_GCM_SHA256', 'TLS_CHACHA20_POLY1305_SHA256'
].join(':')

export function tlsOptions (creds: TlsCredentials, socket: Duplex): ConnectionOptions {
  const base: ConnectionOptions = { socket, minVersion: 'TLSv1.2' }
  if (creds.kind === 'psk') {
    return {
      ...base,
      ciphers: PSK_CIPHERS,
      pskCallback: () => ({ psk: creds.key, identity: creds.identity }),
      // The PSK authenticates the server: there is no certificate to check.
      checkServerIdentity: () => undefined
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
      return checkServerIdentity(hostname, cert)
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
    const socket = connect(tlsOptions(creds, raw))
    const cleanup = (): void => {
      socket.off('secureConnect', onSecure)
      socket.off('error', onError)
      socket.off('close', onClose)
      signal.removeEventListener('abort', onAbort)
    }
    const onSecure = (): void => {
      cleanup()
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

/** OpenSSL's codes, said in words a user can act on. */
export function describeTlsFailure (err: NodeJS.ErrnoException, creds: TlsCredentials): TlsError {
  const code = err.code ?? ''
  let why: string
  const dropped = code === 'ECONNRESET' || code === 'EPIPE' || /socket disconnected/.test(err.message)
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') why = `the server's certificate is not for ${creds.kind === 'x509' ? creds.hostname ?? '?' : '?'} (set tls-hostname if the name differs)`
  else if (/CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|VERIFY/.test(code)) why = `the server's certificate could not be verified (${code}); check the CA in ca-cert.pem`
  else if (creds.kind === 'psk' && (dropped || /DECRYPT|BAD_RECORD_MAC|ALERT|PSK|HANDSHAKE/.test(code + err.message))) why = `the PSK handshake failed (wrong key for ${creds.identity}, or an unknown username)`
  else if (/CERTIFICATE_REQUIRED|ALERT_BAD_CERTIFICATE|ALERT_UNKNOWN_CA|ALERT_HANDSHAKE_FAILURE/.test(code)) why = 'the server refused our certificate (or the lack of one)'
  else if (dropped) why = 'the server dropped the connection during the TLS handshake'
  else why = `the TLS handshake failed${code === '' ? '' : ` (${code})`}`
  return new TlsError(`${why}: ${err.message}`, { cause: err })
}
