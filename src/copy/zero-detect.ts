/**
 * Zero detection (nbdcopy's --sparse): a buffer read as data is cut into blocks of `block`
 * bytes, and runs of all-zero blocks become zero runs, so the destination gets a hole (or
 * nothing) instead of written zeroes.
 *
 *   buffer   | data | 0000 | 0000 | data | data |     (block = 4 KiB)
 *   runs     | data 4K |  zero 8K   |  data 8K    |
 *
 * Data is settled by looking at the first byte of each block (a block whose first byte is not
 * zero is not a zero block); only blocks that start with a zero are compared in full.
 */

export interface Run {
  /** From the start of the buffer. */
  readonly at: number
  readonly length: number
  readonly zero: boolean
}

const ZEROES = Buffer.alloc(1 << 20)

function isZero (buffer: Buffer, from: number, to: number): boolean {
  for (let at = from; at < to; at += ZEROES.length) {
    const end = Math.min(to, at + ZEROES.length)
    if (buffer.compare(ZEROES, 0, end - at, at, end) !== 0) return false
  }
  return true
}

/** The runs of `buffer`; a single data run when no block is zero. */
export function zeroRuns (buffer: Buffer, block: number): Run[] {
  const length = buffer.length
  if (!hasZeroBlock(buffer, block)) return [{ at: 0, length, zero: false }]
  if (isZero(buffer, 0, length)) return [{ at: 0, length, zero: true }]
  const runs: Run[] = []
  for (let at = 0; at < length; at += block) {
    const end = Math.min(length, at + block)
    const zero = isZero(buffer, at, end)
    const last = runs[runs.length - 1]
    if (last !== undefined && last.zero === zero) runs[runs.length - 1] = { at: last.at, length: end - last.at, zero }
    else runs.push({ at, length: end - at, zero })
  }
  return runs
}

/** Whether any block is all zeroes: its first byte must be. */
function hasZeroBlock (buffer: Buffer, block: number): boolean {
  for (let at = 0; at < buffer.length; at += block) {
    if (buffer[at] === 0 && isZero(buffer, at, Math.min(buffer.length, at + block))) return true
  }
  return false
}
