/**
 * One error family for the whole package. Every error carries a stable `code`; callers
 * branch on `code` (or `instanceof`), never on the message.
 *
 *   NbdError                      code
 *   ├── ProtocolError             NBD_ERR_PROTOCOL        the server broke the protocol: the connection is poisoned
 *   ├── HandshakeError            NBD_ERR_HANDSHAKE       the server refused an option or the export
 *   ├── ServerError               NBD_ERR_SERVER          the server failed one request (errno); the connection lives on
 *   ├── ConnectionError           NBD_ERR_CONNECTION      transport failure: refused, reset, EOF
 *   ├── TimeoutError              NBD_ERR_TIMEOUT         a bound expired (connect, handshake, open, request)
 *   ├── ReconnectDelayError       NBD_ERR_RECONNECT_DELAY the server stayed away longer than reconnectDelay
 *   ├── ServerChangedError        NBD_ERR_SERVER_CHANGED  after a reconnect the export is not the one we had
 *   ├── NotSupportedError         NBD_ERR_NOT_SUPPORTED   the server did not advertise what the request needs
 *   ├── InvalidArgumentError      NBD_ERR_INVALID_ARGUMENT the caller asked for something impossible (bounds, length)
 *   ├── ClosedError               NBD_ERR_CLOSED          the client is closed (or quit after a fatal error)
 *   ├── TlsError                  NBD_ERR_TLS             TLS could not be set up or verified
 *   ├── UriError                  NBD_ERR_URI             the NBD URI is malformed or names something unknown
 *   ├── DurabilityError           NBD_ERR_DURABILITY      a FLUSH cannot vouch for writes a lost connection may have lost
 *   ├── InDoubtError              NBD_ERR_IN_DOUBT        an earlier write may still run on a server that stopped answering
 *   ├── OffsetRangeError          NBD_ERR_RANGE           a value does not fit a JavaScript number (ask for a bigint)
 *   ├── MountError                NBD_ERR_MOUNT           a FUSE mount or unmount was refused or failed (see `reason`)
 *   └── AbortedError              ABORT_ERR               the caller's AbortSignal fired (name 'AbortError', as Node's own)
 *
 * Errors are branded with a registry symbol so that `instanceof` works across two copies of the
 * package (undici does the same).
 */

export const NBD_ERROR_CODES = [
  'NBD_ERR_PROTOCOL',
  'NBD_ERR_HANDSHAKE',
  'NBD_ERR_SERVER',
  'NBD_ERR_CONNECTION',
  'NBD_ERR_TIMEOUT',
  'NBD_ERR_RECONNECT_DELAY',
  'NBD_ERR_SERVER_CHANGED',
  'NBD_ERR_NOT_SUPPORTED',
  'NBD_ERR_INVALID_ARGUMENT',
  'NBD_ERR_CLOSED',
  'NBD_ERR_TLS',
  'NBD_ERR_URI',
  'NBD_ERR_DURABILITY',
  'NBD_ERR_IN_DOUBT',
  'NBD_ERR_RANGE',
  'ABORT_ERR',
  'NBD_ERR_MOUNT'
] as const

export type NbdErrorCode = (typeof NBD_ERROR_CODES)[number]

const BRAND = Symbol.for('nbdts.error')

export class NbdError extends Error {
  readonly code: NbdErrorCode

  constructor (code: NbdErrorCode, message: string, options?: ErrorOptions) {
    super(message, options)
    this.code = code
    Object.defineProperty(this, BRAND, { value: code })
  }

  override get name (): string {
    return this.constructor.name
  }

  static override [Symbol.hasInstance] (value: unknown): boolean {
    if (typeof value !== 'object' || value === null) return false
    const code = (value as Record<symbol, unknown>)[BRAND]
    if (typeof code !== 'string') return false
    // The base class matches every branded error; a subclass matches its own code.
    const own = (this as unknown as { CODE?: NbdErrorCode }).CODE
    return own === undefined || own === code
  }
}

export class ProtocolError extends NbdError {
  static readonly CODE = 'NBD_ERR_PROTOCOL'
  constructor (message: string, options?: ErrorOptions) {
    super('NBD_ERR_PROTOCOL', message, options)
  }
}

export class HandshakeError extends NbdError {
  static readonly CODE = 'NBD_ERR_HANDSHAKE'
  /** The option that failed, by spec name (NBD_OPT_GO...), when an option failed. */
  readonly option: string | undefined
  /** The server's reply type name (NBD_REP_ERR_UNKNOWN...), when the server sent one. */
  readonly reply: string | undefined
  constructor (message: string, details: { option?: string, reply?: string, cause?: unknown } = {}) {
    super('NBD_ERR_HANDSHAKE', message, details.cause === undefined ? undefined : { cause: details.cause })
    this.option = details.option
    this.reply = details.reply
  }
}

/** The errno names the NBD protocol can carry, plus EINVAL for anything unknown. */
export type NbdErrno = 'EPERM' | 'EIO' | 'ENOMEM' | 'EINVAL' | 'ENOSPC' | 'EOVERFLOW' | 'ENOTSUP' | 'ESHUTDOWN'

export class ServerError extends NbdError {
  static readonly CODE = 'NBD_ERR_SERVER'
  /** The errno name the server's error maps to. Unknown values map to EINVAL (spec §11). */
  readonly errno: NbdErrno
  /** The raw NBD error value from the wire. */
  readonly nbdError: number
  /** For ERROR_OFFSET chunks: the offset the server blamed. */
  readonly offset: bigint | undefined
  constructor (errno: NbdErrno, nbdError: number, message: string, offset?: bigint) {
    super('NBD_ERR_SERVER', message)
    this.errno = errno
    this.nbdError = nbdError
    this.offset = offset
  }
}

export class ConnectionError extends NbdError {
  static readonly CODE = 'NBD_ERR_CONNECTION'
  constructor (message: string, options?: ErrorOptions) {
    super('NBD_ERR_CONNECTION', message, options)
  }
}

export class TimeoutError extends NbdError {
  static readonly CODE = 'NBD_ERR_TIMEOUT'
  constructor (message: string, options?: ErrorOptions) {
    super('NBD_ERR_TIMEOUT', message, options)
  }
}

export class ReconnectDelayError extends NbdError {
  static readonly CODE = 'NBD_ERR_RECONNECT_DELAY'
  constructor (message: string, options?: ErrorOptions) {
    super('NBD_ERR_RECONNECT_DELAY', message, options)
  }
}

export class ServerChangedError extends NbdError {
  static readonly CODE = 'NBD_ERR_SERVER_CHANGED'
  constructor (message: string) {
    super('NBD_ERR_SERVER_CHANGED', message)
  }
}

export class NotSupportedError extends NbdError {
  static readonly CODE = 'NBD_ERR_NOT_SUPPORTED'
  constructor (message: string) {
    super('NBD_ERR_NOT_SUPPORTED', message)
  }
}

export class InvalidArgumentError extends NbdError {
  static readonly CODE = 'NBD_ERR_INVALID_ARGUMENT'
  constructor (message: string) {
    super('NBD_ERR_INVALID_ARGUMENT', message)
  }
}

export class ClosedError extends NbdError {
  static readonly CODE = 'NBD_ERR_CLOSED'
  constructor (message: string, options?: ErrorOptions) {
    super('NBD_ERR_CLOSED', message, options)
  }
}

export class TlsError extends NbdError {
  static readonly CODE = 'NBD_ERR_TLS'
  constructor (message: string, options?: ErrorOptions) {
    super('NBD_ERR_TLS', message, options)
  }
}

export class UriError extends NbdError {
  static readonly CODE = 'NBD_ERR_URI'
  constructor (message: string) {
    super('NBD_ERR_URI', message)
  }
}

/**
 * A FLUSH succeeded, but writes acknowledged before a lost connection may have been lost by
 * the server and could not be written again (the write ledger kept no copy): they are
 * not known to be durable. Maps to EIO.
 */
export class DurabilityError extends NbdError {
  static readonly CODE = 'NBD_ERR_DURABILITY'
  readonly errno = 'EIO'
  constructor (message: string) {
    super('NBD_ERR_DURABILITY', message)
  }
}

/**
 * An earlier write is in doubt: it was sent on a connection that stopped answering and was
 * given up, so the server may still run it, for as long as that connection stays open. A write
 * overlapping it is refused rather than wait without bound or overtake it. Maps to EIO.
 */
export class InDoubtError extends NbdError {
  static readonly CODE = 'NBD_ERR_IN_DOUBT'
  readonly errno = 'EIO'
  constructor (message: string) {
    super('NBD_ERR_IN_DOUBT', message)
  }
}

/** A size or offset past Number.MAX_SAFE_INTEGER was asked for as a number. */
export class OffsetRangeError extends NbdError {
  static readonly CODE = 'NBD_ERR_RANGE'
  constructor (message: string) {
    super('NBD_ERR_RANGE', message)
  }
}

export class AbortedError extends NbdError {
  static readonly CODE = 'ABORT_ERR'
  constructor (reason?: unknown) {
    super('ABORT_ERR', 'The operation was aborted', reason === undefined ? undefined : { cause: reason })
  }

  override get name (): string {
    return 'AbortError'
  }
}

/**
 * Why a mount or unmount did not happen: `unsafe-target` (a symlink, or a path another user
 * could change), `busy` (in use: a loop device, an open file), `not-mounted`, `helper` (mount,
 * umount or fusermount3 failed), `native` (a system call needs koffi, which is absent).
 */
export type MountErrorReason = 'unsafe-target' | 'busy' | 'not-mounted' | 'helper' | 'native'

export class MountError extends NbdError {
  static readonly CODE = 'NBD_ERR_MOUNT'
  readonly reason: MountErrorReason
  constructor (reason: MountErrorReason, message: string, options?: ErrorOptions) {
    super('NBD_ERR_MOUNT', message, options)
    this.reason = reason
  }
}

/**
 * A socket error as a ConnectionError that says what happened: the peer going away (EPIPE on
 * a write, ECONNRESET) is "server closed the connection", the system error kept as the cause.
 */
export function socketError (err: unknown): ConnectionError {
  const code = (err as NodeJS.ErrnoException | undefined)?.code
  if (code === 'EPIPE' || code === 'ECONNRESET') return new ConnectionError('server closed the connection', { cause: err })
  return new ConnectionError(`connection failed${code === undefined ? '' : ` (${code})`}`, { cause: err })
}

/** Throws an AbortedError if the signal has fired. */
export function throwIfAborted (signal: AbortSignal | undefined): void {
  if (signal?.aborted === true) throw new AbortedError(signal.reason)
}

/**
 * Errors that mean "the byte stream is gone", as opposed to a server that answered badly.
 * The request engine retries these across a reconnect (QEMU's -EIO class); everything else
 * is final.
 */
export function isTransportError (err: unknown): boolean {
  return err instanceof ConnectionError || err instanceof TimeoutError
}

/** One line for a person: the message plus the causes that add information. */
export function describeError (err: unknown): string {
  if (!(err instanceof Error)) return String(err)
  let text = err.message
  let cause: unknown = err.cause
  for (let depth = 0; depth < 4 && cause instanceof Error; depth++) {
    const code = (cause as NodeJS.ErrnoException).code
    const known = text.includes(cause.message) || (typeof code === 'string' && text.includes(code))
    if (!known) text += `: ${cause.message}`
    cause = cause.cause
  }
  return text
}

/**
 * An error as users other than root may see it: its class and code, and the system error code
 * (ECONNREFUSED) of its first cause that has one. Never its message, which may name a key file,
 * a PSK identity or a path ("username svc-backup was not found in the PSK file /etc/...").
 */
export function publicError (err: unknown): string {
  if (!(err instanceof Error)) return 'Error'
  const own = (err as { code?: unknown }).code
  const parts: string[] = typeof own === 'string' && /^[A-Z][A-Z0-9_]*$/.test(own) ? [own] : []
  const reason = (err as { reason?: unknown }).reason
  if (err instanceof MountError && typeof reason === 'string') parts.push(reason)
  let cause: unknown = err.cause
  for (let depth = 0; depth < 4 && cause instanceof Error; depth++) {
    const code = (cause as NodeJS.ErrnoException).code
    if (typeof code === 'string' && /^E[A-Z0-9]+$/.test(code)) {
      parts.push(code)
      break
    }
    cause = cause.cause
  }
  const name = /^[A-Za-z]+$/.test(err.name) ? err.name : 'Error'
  return parts.length === 0 ? name : `${name} (${parts.join(', ')})`
}
