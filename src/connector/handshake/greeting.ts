/**
 * The first exchange: the server's greeting and our client flags. An oldstyle server is
 * recognised and refused by name: it offers no export names, no options and no TLS.
 */
import { HandshakeError } from '../../errors.ts'
import { NBD_GREETING_PREFIX } from '../../protocol/constants.ts'
import { encodeClientFlags, parseGreetingPrefix, parseHandshakeFlags, type HandshakeFlags } from '../../protocol/greeting.ts'
import type { OptionChannel } from './option-channel.ts'

export async function greet (ch: OptionChannel): Promise<HandshakeFlags> {
  const prefix = await ch.read(NBD_GREETING_PREFIX, 'greeting')
  if (parseGreetingPrefix(prefix) === 'oldstyle') {
    throw new HandshakeError('the server speaks the oldstyle NBD handshake, which has no export names, options or TLS; nbdts needs a newstyle server (nbdkit without -o, qemu-nbd, nbd-server ≥ 3.10)')
  }
  const flags = parseHandshakeFlags((await ch.read(2, 'handshake flags')).readUInt16BE(0))
  ch.send(encodeClientFlags(flags))
  return flags
}
