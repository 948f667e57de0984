/**
 * NBD_OPT_ABORT: the soft disconnect during the handshake. The server SHOULD ACK, but may
 * answer with an error (qemu-nbd in forced-TLS mode) or simply close (nbd-server): all three
 * are fine, and the wait is bounded.
 */
import { NBD_OPT } from '../../protocol/constants.ts'
import type { OptionChannel } from './option-channel.ts'

export async function optAbort (ch: OptionChannel, timeoutMs = 1000): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  const bounded = new Promise<void>((resolve) => { timer = setTimeout(resolve, timeoutMs) })
  try {
    await Promise.race([ch.exchange(NBD_OPT.ABORT, undefined, () => {}).then(() => {}, () => {}), bounded])
  } catch {
    // Whatever happens now, we are leaving.
  } finally {
    clearTimeout(timer)
  }
}
