/**
 * Two connected in-memory Duplex streams (Node 20 has no stream.duplexPair). Writes complete
 * synchronously and the high-water mark is tiny, so every write reports "need drain" and
 * 'drain' follows in a nextTick: the timing that exposes a late drain listener.
 */
import { Duplex } from 'node:stream'

export function duplexPair (highWaterMark = 1024): [Duplex, Duplex] {
  let a!: Duplex
  let b!: Duplex
  const make = (peer: () => Duplex): Duplex => new Duplex({
    writableHighWaterMark: highWaterMark,
    read () {},
    write (chunk: Buffer, _encoding, callback) {
      peer().push(chunk)
      callback()
    },
    final (callback) {
      peer().push(null)
      callback()
    }
  })
  a = make(() => b)
  b = make(() => a)
  return [a, b]
}
