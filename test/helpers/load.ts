/**
 * A write + verify load: `workers` writers, each in its own region, write random bytes, read
 * them back and compare, until `until()` says stop. A write is copied into `model` only once
 * acknowledged, so at the end `model` is what the export must hold.
 */
import assert from 'node:assert/strict'
import { randomBytes, randomInt } from 'node:crypto'
import type { NbdClient } from '../../src/index.ts'

export interface LoadOptions {
  readonly workers?: number
  /** Largest write, bytes. @default 32768 */
  readonly maxWrite?: number
  /** A FLUSH after about one round in this many (0: none). @default 0 */
  readonly flushEvery?: number
}

/** Resolves with the number of write + verify rounds done. */
export function writeVerifyLoad (client: NbdClient, model: Buffer, until: () => boolean, options: LoadOptions = {}): Promise<number> {
  const workers = options.workers ?? 64
  const maxWrite = options.maxWrite ?? 32_768
  const region = model.length / workers
  let rounds = 0
  return Promise.all(Array.from({ length: workers }, async (_, w) => {
    while (!until()) {
      const offset = w * region + randomInt(region - maxWrite - 1)
      const data = randomBytes(1 + randomInt(maxWrite))
      await client.write(data, offset)
      data.copy(model, offset)
      const back = await client.read(data.length, offset)
      assert.ok(back.equals(data), `read-back at ${offset}+${data.length}`)
      if (options.flushEvery !== undefined && options.flushEvery > 0 && randomInt(options.flushEvery) === 0) await client.flush()
      rounds++
    }
  })).then(() => rounds)
}
