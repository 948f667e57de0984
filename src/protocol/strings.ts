/**
 * NBD strings: UTF-8, no NUL, at most 4096 bytes, length always taken from an enclosing
 * field (spec, Conventions). A server that sends anything else broke the protocol.
 */
import { ProtocolError, InvalidArgumentError } from '../errors.ts'
import { NBD_MAX_STRING } from './constants.ts'

const decoder = new TextDecoder('utf-8', { fatal: true })

/** Decodes a string the server sent; `what` names it in the error. */
export function decodeString (bytes: Uint8Array, what: string): string {
  if (bytes.length > NBD_MAX_STRING) {
    throw new ProtocolError(`${what} is ${bytes.length} bytes, above the protocol's limit of ${NBD_MAX_STRING}`)
  }
  let text: string
  try {
    text = decoder.decode(bytes)
  } catch (err) {
    throw new ProtocolError(`${what} is not valid UTF-8`, { cause: err })
  }
  if (text.includes('\0')) throw new ProtocolError(`${what} contains a NUL character`)
  return text
}

/** Encodes a string we are about to send, refusing what the server would have to reject. */
export function encodeString (text: string, what: string): Buffer {
  if (text.includes('\0')) throw new InvalidArgumentError(`${what} must not contain a NUL character`)
  const bytes = Buffer.from(text, 'utf8')
  if (bytes.length > NBD_MAX_STRING) {
    throw new InvalidArgumentError(`${what} is ${bytes.length} bytes; the protocol allows at most ${NBD_MAX_STRING}`)
  }
  return bytes
}
