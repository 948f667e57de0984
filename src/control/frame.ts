/**
 * Control socket framing, both directions:
 *
 *   8 bytes  length of the text, unsigned 64-bit, LITTLE-ENDIAN
 *   n bytes  UTF-8 text (no terminating NUL)
 *
 * Lengths are checked before anything is allocated: a command is 1 to 4096 bytes, a reply at
 * most 32 MiB. Anything else is not a control client we can talk to.
 */
import { ControlError } from './errors.ts'

export const FRAME_HEADER = 8
export const MAX_COMMAND = 4096
export const MAX_REPLY = 32 * 1024 * 1024

export function encodeFrame (text: string): Buffer {
  const body = Buffer.from(text, 'utf8')
  const frame = Buffer.allocUnsafe(FRAME_HEADER + body.length)
  frame.writeBigUInt64LE(BigInt(body.length), 0)
  body.copy(frame, FRAME_HEADER)
  return frame
}

const decoder = new TextDecoder('utf-8', { fatal: true })

export function decodeText (body: Buffer): string {
  try {
    return decoder.decode(body)
  } catch {
    throw new ControlError('CTL_BAD_FRAME', 'frame is not valid UTF-8')
  }
}

/**
 * Accumulates bytes and yields whole frames. `max` bounds one frame's body; a length outside
 * 1..max (or 0..max for replies) throws before the body is read.
 */
export class FrameDecoder {
  readonly #max: number
  readonly #allowEmpty: boolean
  #chunks: Buffer[] = []
  #buffered = 0
  #length = -1

  constructor (max: number, allowEmpty = false) {
    this.#max = max
    this.#allowEmpty = allowEmpty
  }

  get buffered (): number {
    return this.#buffered
  }

  /** True once any byte of a frame has arrived (the request deadline starts there). */
  get started (): boolean {
    return this.#buffered > 0 || this.#length >= 0
  }

  push (chunk: Buffer): void {
    this.#chunks.push(chunk)
    this.#buffered += chunk.length
  }

  /** The next complete frame's body, or undefined when more bytes are needed. */
  next (): Buffer | undefined {
    if (this.#length < 0) {
      if (this.#buffered < FRAME_HEADER) return undefined
      const header = this.#take(FRAME_HEADER)
      const length = header.readBigUInt64LE(0)
      if (length > BigInt(this.#max) || (length === 0n && !this.#allowEmpty)) {
        throw new ControlError('CTL_BAD_FRAME', `frame length ${length} is outside 1..${this.#max}`)
      }
      this.#length = Number(length)
    }
    if (this.#buffered < this.#length) return undefined
    const body = this.#take(this.#length)
    this.#length = -1
    return body
  }

  #take (n: number): Buffer {
    const all = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks)
    this.#chunks = all.length > n ? [all.subarray(n)] : []
    this.#buffered -= n
    return all.subarray(0, n)
  }
}
