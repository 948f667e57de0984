/**
 * NBD_OPT_STARTTLS, always the first option when TLS may be used (the spec's downgrade
 * protection, and nothing else has been negotiated yet that TLS would throw away).
 *
 *   STARTTLS ──ACK──► no plaintext may follow the ACK ──► TLS handshake ──► new channel
 *       │error
 *       ├── mode require ──► TlsError (close; nothing else is ever sent in clear)
 *       └── mode on ───────► go on in plaintext
 */
import { TlsError } from '../../errors.ts'
import { NBD_OPT } from '../../protocol/constants.ts'
import { SocketReader } from '../../transport/socket-reader.ts'
import type { TlsCredentials, TlsMode } from '../../transport/tls-credentials.ts'
import { startTls } from '../../transport/tls-upgrade.ts'
import { unexpectedReply, type OptionChannel } from './option-channel.ts'

/** True when the channel now runs over TLS; false when the server declined and mode is 'on'. */
export async function optStartTls (ch: OptionChannel, mode: Exclude<TlsMode, 'off'>, creds: TlsCredentials, signal: AbortSignal): Promise<boolean> {
  const err = await ch.exchange(NBD_OPT.STARTTLS, undefined, unexpectedReply(NBD_OPT.STARTTLS))
  if (err !== undefined) {
    if (mode === 'on') return false
    const detail = err.message === '' ? err.name : `${err.name}: ${err.message}`
    throw new TlsError(`TLS is required, but the server refused NBD_OPT_STARTTLS (${detail})`)
  }
  // Bytes after the ACK arrived in clear before the handshake: an attacker's injection
  // (the STARTTLS command-injection class of bugs). Nothing may be waiting.
  const early = ch.reader.detach()
  if (early.length > 0) {
    throw new TlsError(`the server sent ${early.length} plaintext bytes after acknowledging STARTTLS; refusing them`)
  }
  const secure = await startTls(ch.socket, creds, signal)
  ch.socket = secure
  ch.reader = new SocketReader(secure)
  ch.tls = true
  return true
}
