/**
 * `-` (and FIFOs, character devices): a stream read or written in order. A pipe source has no
 * size (the copy ends at EOF, and fails if the destination is smaller); a pipe destination
 * takes every byte in order, zeroes included (the copier sequences its writes).
 */
import type { Readable, Writable } from 'node:stream'
import { AbortedError } from '../errors.ts'
import { writeZeroBytes, type CopyDestination, type CopySource } from './endpoint.ts'

/** Copies a Readable's chunks into the caller's buffers, in order. */
class StreamFiller {
  readonly #stream: Readable
  #rest: Buffer | undefined
  #ended = false
  #error: Error | undefined

  constructor (stream: Readable) {
    this.#stream = stream
    stream.on('end', () => { this.#ended = true })
    stream.on('error', (err) => { this.#error = err })
  }

  async fill (buffer: Buffer, signal: AbortSignal): Promise<number> {
    let filled = 0
    while (filled < buffer.length) {
      if (this.#error !== undefined) throw this.#error
      const chunk = this.#rest ?? this.#stream.read() as Buffer | null
      this.#rest = undefined
      if (chunk === null) {
        if (this.#ended) break
        await this.#readable(signal)
        continue
      }
      const n = Math.min(chunk.length, buffer.length - filled)
      chunk.copy(buffer, filled, 0, n)
      filled += n
      if (n < chunk.length) this.#rest = chunk.subarray(n)
    }
    return filled
  }

  #readable (signal: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const done = (): void => {
        this.#stream.off('readable', done).off('end', done).off('error', done)
        signal.removeEventListener('abort', onAbort)
        resolve()
      }
      const onAbort = (): void => { done(); reject(new AbortedError(signal.reason)) }
      if (signal.aborted) { onAbort(); return }
      this.#stream.once('readable', done).once('end', done).once('error', done)
      signal.addEventListener('abort', onAbort, { once: true })
    })
  }
}

export function pipeSource (name: string, stream: Readable): CopySource {
  const filler = new StreamFiller(stream)
  return {
    name,
    size: undefined,
    connections: 1,
    preferredBlockSize: undefined,
    readNext: (buffer, signal) => filler.fill(buffer, signal),
    close: async () => { stream.destroy() }
  }
}

/** `owned`: a stream we opened (a FIFO path), ended on close; stdout is left open. */
export function pipeDestination (name: string, stream: Writable, owned = false): CopyDestination {
  let error: Error | undefined
  stream.on('error', (err) => { error ??= err })
  // Resolves once the bytes are handed to the kernel (the callback), so the buffer may be reused.
  const write = (data: Buffer): Promise<void> => new Promise((resolve, reject) => {
    if (error !== undefined) { reject(error); return }
    stream.write(data, (err) => { if (err === undefined || err === null) resolve(); else reject(err) })
  })
  return {
    name,
    size: undefined,
    connections: 1,
    preferredBlockSize: undefined,
    seekable: false,
    startsZero: false,
    write,
    zero: (offset, length) => writeZeroBytes(write, offset, length),
    flush: async () => {},
    close: () => new Promise<void>((resolve) => {
      if (!owned) { resolve(); return }
      stream.end(() => { resolve() })
      stream.once('error', () => { resolve() })
    })
  }
}
