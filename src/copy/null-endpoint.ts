/** `null:` as the destination: discards everything, as nbdcopy's null: does. */
import type { CopyDestination } from './endpoint.ts'

export function nullDestination (): CopyDestination {
  const done = (): Promise<void> => Promise.resolve()
  return {
    name: 'null:',
    size: undefined,
    connections: 1,
    preferredBlockSize: undefined,
    seekable: true,
    startsZero: true,
    discards: true,
    write: done,
    zero: done,
    flush: done,
    close: done
  }
}
