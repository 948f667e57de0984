/**
 * What the kernel returns to the process doing I/O on the mounted file, for each client error.
 * Negative errno values, as FUSE replies carry them.
 */
import { constants } from 'node:os'
import { NbdError } from '../errors.ts'

const E = constants.errno

export function errnoOf (err: unknown): number {
  if (!(err instanceof NbdError)) return -E.EIO
  switch (err.code) {
    case 'NBD_ERR_SERVER': {
      const name = (err as NbdError & { errno: keyof typeof E | 'ENOTSUP' | 'ESHUTDOWN' }).errno
      if (name === 'ENOTSUP') return -E.EOPNOTSUPP
      if (name === 'ESHUTDOWN') return -E.EIO
      return -(E[name] ?? E.EIO)
    }
    case 'NBD_ERR_NOT_SUPPORTED': return -E.EOPNOTSUPP
    case 'NBD_ERR_INVALID_ARGUMENT': return -E.EINVAL
    case 'ABORT_ERR': return -E.EINTR
    // The server is away, gone for good, or broke the protocol: an I/O error for the caller.
    default: return -E.EIO
  }
}

export const ERRNO = {
  EPERM: -E.EPERM,
  ENOENT: -E.ENOENT,
  EINTR: -E.EINTR,
  EIO: -E.EIO,
  ENXIO: -E.ENXIO,
  EAGAIN: -E.EAGAIN,
  EINVAL: -E.EINVAL,
  ENOSPC: -E.ENOSPC,
  EROFS: -E.EROFS,
  ENOSYS: -E.ENOSYS,
  EOPNOTSUPP: -E.EOPNOTSUPP,
  EPROTO: -E.EPROTO
} as const
