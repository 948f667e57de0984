/**
 * Micro-benchmark (not a test, not part of `npm run bench`): the range lock's tryAcquire +
 * release with 16 and 64 ranges held, the index over numbers against the scan over BigInts it
 * replaced (kept below as it was, with its caller's BigInt end). Random 4 KiB writes over
 * 1 GiB, as a 4 KiB randwrite run at that queue depth would have them; nobody waits.
 *
 *   node --import tsx bench/range-lock.ts [--ops 2000000]
 *
 * One process, one run each, timed in CPU time (the machine is shared): rough figures, for the
 * order of magnitude.
 */
import { parseArgs } from 'node:util'
import { RangeLock } from '../src/client/range-lock.ts'
import { WaitQueue } from '../src/client/wait-queue.ts'

/** The lock before it was indexed (its tryAcquire/release path, unchanged). */
interface ScanRange { readonly start: bigint, readonly end: bigint }
const scanOverlaps = (a: ScanRange, b: ScanRange): boolean => a.start < b.end && b.start < a.end
class ScanRangeLock {
  readonly #held = new Set<ScanRange>()
  readonly #pinned = new Set<ScanRange>()
  readonly #queue = new WaitQueue<ScanRange>({
    grantable: (range, ahead) => !this.#conflicts(range) && !ahead.some((a) => scanOverlaps(a, range)),
    granted: (range) => { this.#held.add(range) }
  })

  tryAcquire (start: bigint, end: bigint): ScanRange | undefined {
    const range = { start, end }
    for (const pinned of this.#pinned) if (scanOverlaps(range, pinned)) throw new Error('in doubt')
    if (this.#conflicts(range)) return undefined
    if (this.#queue.length > 0 && this.#queue.items().some((w) => scanOverlaps(w, range))) return undefined
    this.#held.add(range)
    return range
  }

  release (range: ScanRange): void {
    this.#pinned.delete(range)
    if (this.#held.delete(range)) this.#queue.pump()
  }

  #conflicts (range: ScanRange): boolean {
    for (const held of this.#held) if (scanOverlaps(range, held)) return true
    return false
  }
}

const { values } = parseArgs({ options: { ops: { type: 'string', default: '2000000' } } })
const OPS = Number(values.ops)
const LENGTH = 4096
const BLOCKS = (1 << 30) / LENGTH

/** CPU time (user + system) since `t0`, in ns: steadier than wall time on a shared machine. */
function cpuNs (t0: NodeJS.CpuUsage): number {
  const { user, system } = process.cpuUsage(t0)
  return (user + system) * 1000
}

// Offsets drawn up front (a fixed seed), so that both locks see the same ones.
let seed = 0x26
function rand (n: number): number {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) % n
}
const offsets = Array.from({ length: 1 << 16 }, () => BigInt(rand(BLOCKS) * LENGTH))

function runScan (depth: number, ops: number): number {
  const lock = new ScanRangeLock()
  const held: ScanRange[] = []
  let k = 0
  const take = (): ScanRange => {
    for (;;) {
      const offset = offsets[k++ & 0xffff]!
      const r = lock.tryAcquire(offset, offset + BigInt(LENGTH))
      if (r !== undefined) return r
    }
  }
  for (let i = 0; i < depth; i++) held.push(take())
  const t0 = process.cpuUsage()
  for (let i = 0; i < ops; i++) {
    const slot = i % depth
    lock.release(held[slot]!)
    held[slot] = take()
  }
  return cpuNs(t0) / ops
}

function runIndex (depth: number, ops: number): number {
  const lock = new RangeLock()
  const held: Array<NonNullable<ReturnType<RangeLock['tryAcquire']>>> = []
  let k = 0
  const take = (): NonNullable<ReturnType<RangeLock['tryAcquire']>> => {
    for (;;) {
      const r = lock.tryAcquire(offsets[k++ & 0xffff]!, LENGTH)
      if (r !== undefined) return r
    }
  }
  for (let i = 0; i < depth; i++) held.push(take())
  const t0 = process.cpuUsage()
  for (let i = 0; i < ops; i++) {
    const slot = i % depth
    lock.release(held[slot]!)
    held[slot] = take()
  }
  return cpuNs(t0) / ops
}

// Warm both up (JIT) before timing.
for (const depth of [16, 64]) {
  runScan(depth, OPS / 10)
  runIndex(depth, OPS / 10)
}
console.log(`tryAcquire + release, ${OPS} pairs, random 4 KiB ranges over 1 GiB, CPU ns per pair (one run):`)
console.log('held  scan (BigInt)  index (numbers)  ratio')
for (const depth of [16, 64]) {
  const scan = runScan(depth, OPS)
  const index = runIndex(depth, OPS)
  console.log(`${String(depth).padStart(4)}  ${scan.toFixed(0).padStart(13)}  ${index.toFixed(0).padStart(15)}  ${(scan / index).toFixed(1).padStart(5)}×`)
}
