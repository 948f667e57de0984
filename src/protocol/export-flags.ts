/**
 * Transmission flags (spec §"Transmission flags"): what the server lets us do with an export.
 */
import { ProtocolError } from '../errors.ts'
import { NBD_FLAG } from './constants.ts'
import type { ReplyMode } from './reply.ts'

/**
 * Checks the flags the server sent and returns the ones we may act on. HAS_FLAGS must be
 * set. A feature advertised without what it depends on (DF without structured replies,
 * FAST_ZERO without WRITE_ZEROES, BLOCK_STATUS_PAYLOAD without extended headers) is a
 * violation: we never use it, rather than guess.
 */
export function usableTransmissionFlags (flags: number, mode: ReplyMode): number {
  if ((flags & NBD_FLAG.HAS_FLAGS) === 0) {
    throw new ProtocolError(`transmission flags 0x${flags.toString(16)} lack NBD_FLAG_HAS_FLAGS`)
  }
  let usable = flags
  if (mode === 'simple') usable &= ~NBD_FLAG.SEND_DF
  if ((flags & NBD_FLAG.SEND_WRITE_ZEROES) === 0) usable &= ~NBD_FLAG.SEND_FAST_ZERO
  if (mode !== 'extended') usable &= ~NBD_FLAG.BLOCK_STATUS_PAYLOAD
  return usable
}

/** Flag names as nbdinfo prints them, for `nbdts info`. */
export const FLAG_FEATURES = [
  ['is_rotational', NBD_FLAG.ROTATIONAL],
  ['is_read_only', NBD_FLAG.READ_ONLY],
  ['can_cache', NBD_FLAG.SEND_CACHE],
  ['can_df', NBD_FLAG.SEND_DF],
  ['can_fast_zero', NBD_FLAG.SEND_FAST_ZERO],
  ['can_flush', NBD_FLAG.SEND_FLUSH],
  ['can_fua', NBD_FLAG.SEND_FUA],
  ['can_multi_conn', NBD_FLAG.CAN_MULTI_CONN],
  ['can_trim', NBD_FLAG.SEND_TRIM],
  ['can_zero', NBD_FLAG.SEND_WRITE_ZEROES]
] as const
