/**
 * The shared state between the device reader (device-worker.ts) and the main thread
 * (channel.ts): one Int32Array holding the slot states, four control words and a ring of slot
 * numbers.
 *
 *   words:  [ slot states × slotCount | FREES HEAD TAIL IDLE | ring × ringSize ]
 *   slots:  FREE ──reader fills──► FILLED ──main answers──► FREE
 *   ring:   reader: ring[head & mask] = slot; head = head + 1 | 0
 *           main:   slot = ring[tail & mask]; tail = tail + 1 | 0
 *
 * HEAD and TAIL are free-running int32 counters: they wrap from 2^31 - 1 to -2^31, which
 * `| 0` does on both sides alike, so they stay comparable with ===. The ring size is a power
 * of two, so `x & mask` is continuous across that wrap (two's complement): index 2^31 - 1 is
 * followed by index -2^31 & mask, the next slot. (A JS number counter compared with the int32
 * the other thread stored, or `%` of a negative number, is what hung after 2^31 requests.)
 * At most slotCount entries are ever in the ring (one per FILLED slot), so it never overflows.
 */

export const SLOT_FREE = 0
export const SLOT_FILLED = 1
/** Control words, after the slot states. */
export const FREES = 0
export const HEAD = 1
export const TAIL = 2
export const IDLE = 3
export const CONTROL_WORDS = 4

/** Messages from the reader: a wake-up, or the device's end. */
export const WAKE = 0
export const END = -1

export interface RingLayout {
  readonly slotCount: number
  /** Index of the first control word. */
  readonly control: number
  /** Index of the first ring word. */
  readonly ring: number
  /** ringSize - 1. */
  readonly mask: number
  /** Int32 words in all. */
  readonly words: number
}

export function ringLayout (slotCount: number): RingLayout {
  let size = 1
  while (size < slotCount) size *= 2
  const control = slotCount
  const ring = control + CONTROL_WORDS
  return { slotCount, control, ring, mask: size - 1, words: ring + size }
}

/** The next value of a HEAD or TAIL counter. */
export function next (counter: number): number {
  return (counter + 1) | 0
}
