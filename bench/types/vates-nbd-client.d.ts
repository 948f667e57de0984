/** The parts of @vates/nbd-client 3.6.0 the bench uses (the package ships no types). */
declare module '@vates/nbd-client' {
  export interface NbdSettings { address?: string, port?: number | string, exportname: string }
  export default class NbdClient {
    constructor (settings: NbdSettings, options?: Record<string, number>)
    readonly exportSize: bigint
    connect (): Promise<void>
    disconnect (): Promise<void>
    readBlock (index: number, size?: number): Promise<Buffer>
  }
}
declare module '@vates/nbd-client/multi.mjs' {
  import type { NbdSettings } from '@vates/nbd-client'
  export default class MultiNbdClient {
    constructor (settings: NbdSettings | NbdSettings[], options?: { nbdConcurrency?: number, readAhead?: number })
    readonly exportSize: bigint
    connect (): Promise<void>
    disconnect (): Promise<void>
    readBlock (index: number, size?: number): Promise<Buffer>
  }
}
