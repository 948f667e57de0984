/**
 * NBD error values (spec §"Error values") and the errno names they stand for. The values are
 * Linux's errno numbers, but a client MUST NOT assume the server's platform: anything outside
 * this table is reported as EINVAL and does not end the connection.
 */
import type { NbdErrno } from '../errors.ts'

export const NBD_ERRNO: Readonly<Record<number, NbdErrno>> = {
  1: 'EPERM',
  5: 'EIO',
  12: 'ENOMEM',
  22: 'EINVAL',
  28: 'ENOSPC',
  75: 'EOVERFLOW',
  95: 'ENOTSUP',
  108: 'ESHUTDOWN'
}

export const NBD_ESHUTDOWN = 108

/** Maps an NBD error value to its errno name; unknown values become EINVAL. */
export function errnoFromNbd (value: number): NbdErrno {
  return NBD_ERRNO[value] ?? 'EINVAL'
}
