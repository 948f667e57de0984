/**
 * A file exerciser in the spirit of xfstests' fsx: seeded random operations on a file (the
 * mounted export) checked against an in-memory model of what it must hold.
 *
 *   read / write            buffered pread / pwrite
 *   mapread / mapwrite      through mmap(MAP_SHARED) of the pages around the range (+ msync)
 *   dread / dwrite          O_DIRECT, block-aligned, from page-aligned memory
 *   punch / zero            fallocate PUNCH_HOLE / ZERO_RANGE (KEEP_SIZE): the model zeroes
 *   seek                    SEEK_DATA and SEEK_HOLE: what is called a hole must be zeroes in
 *                           the model, and no data may be skipped over
 *   trunc                   open(O_TRUNC): the whole file reads as zeroes after it
 *   fsync
 *
 * Every read is compared with the model; a mismatch throws an FsxMismatch naming the seed, the
 * operation number, the first differing offset and the last operations, so `--seed S` replays it.
 */
import { closeSync, constants, fstatSync, fsyncSync, openSync, readSync, writeSync } from 'node:fs'
import {
  FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, SEEK_DATA, SEEK_HOLE, alignedRegion, fallocate, mapFile,
  preadInto, pwriteFrom, seek, syncRegion, unmap, type Region
} from './file-syscalls.ts'

export interface FsxOptions {
  readonly file: string
  /** The file's size (the export's: fixed). */
  readonly size: number
  readonly ops: number
  readonly seed: number
  /** Largest transfer, bytes. @default 65536 */
  readonly maxLength?: number
  /** O_DIRECT alignment, bytes. @default 4096 */
  readonly block?: number
  /** Called every `progressEvery` operations. */
  readonly progress?: (done: number) => void
  readonly progressEvery?: number
  /** Leave O_TRUNC out (a server whose zeroing is slow). */
  readonly noTrunc?: boolean
}

export interface FsxResult {
  readonly counts: Record<string, number>
}

const OPS = ['read', 'write', 'mapread', 'mapwrite', 'dread', 'dwrite', 'punch', 'zero', 'seek', 'fsync', 'trunc'] as const
type Op = typeof OPS[number]
/** Relative weights: mostly data, some of everything. */
const WEIGHTS: Record<Op, number> = { read: 14, write: 14, mapread: 8, mapwrite: 8, dread: 10, dwrite: 10, punch: 8, zero: 8, seek: 10, fsync: 2, trunc: 0.3 }
const PAGE = 4096
const HISTORY = 24

export class FsxMismatch extends Error {}

/** mulberry32: small, fast, and the same sequence for a seed everywhere. */
export function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export function runFsx (options: FsxOptions): FsxResult {
  const { file, size, ops, seed } = options
  const maxLength = options.maxLength ?? 65536
  const block = options.block ?? PAGE
  const random = prng(seed)
  const int = (n: number): number => Math.floor(random() * n)
  const model = Buffer.alloc(size)
  const history: string[] = []
  const counts: Record<string, number> = {}
  const weights = OPS.map((op) => (op === 'trunc' && options.noTrunc === true) ? 0 : WEIGHTS[op])
  const total = weights.reduce((a, b) => a + b, 0)
  const pick = (): Op => {
    let r = random() * total
    for (let i = 0; i < OPS.length; i++) {
      r -= weights[i]!
      if (r < 0) return OPS[i]!
    }
    return 'read'
  }
  const fd = openSync(file, constants.O_RDWR)
  const direct = openSync(file, constants.O_RDWR | constants.O_DIRECT)
  const aligned = alignedRegion(Math.max(maxLength, block) + block)
  let step = 0

  const fail = (message: string): never => {
    throw new FsxMismatch(`fsx seed ${seed}, operation ${step}: ${message}\nlast operations (oldest first):\n  ${history.join('\n  ')}`)
  }
  const compare = (got: Buffer, offset: number, what: string): void => {
    const want = model.subarray(offset, offset + got.length)
    if (got.equals(want)) return
    let at = 0
    while (got[at] === want[at]) at++
    fail(`${what} differs at offset ${offset + at} (0x${(offset + at).toString(16)}): read 0x${got[at]!.toString(16)}, model 0x${want[at]!.toString(16)}; ` +
      `read ${got.subarray(at, at + 16).toString('hex')} model ${want.subarray(at, at + 16).toString('hex')}`)
  }
  const range = (alignTo = 1): [number, number] => {
    const length = Math.max(alignTo, Math.floor((1 + int(maxLength)) / alignTo) * alignTo)
    const offset = Math.floor(int(size - length + 1) / alignTo) * alignTo
    return [offset, length]
  }
  const fillRandom = (target: Buffer): void => {
    // A pattern with the step in it: a stale write shows where it came from.
    const base = int(256)
    for (let i = 0; i < target.length; i++) target[i] = (base + i * 7 + (i >> 9)) & 0xff
    if (target.length > 0) target[0] = step & 0xff
  }
  const withMap = (offset: number, length: number, use: (view: Buffer, region: Region) => void): void => {
    // As programs do before mmap: the size (after O_TRUNC the kernel holds 0 until it asks).
    const st = fstatSync(fd)
    if (st.size !== size) fail(`fstat says ${st.size} bytes, not ${size}`)
    const start = Math.floor(offset / PAGE) * PAGE
    const end = Math.min(size, Math.ceil((offset + length) / PAGE) * PAGE)
    const region = mapFile(fd, BigInt(start), end - start)
    try {
      use(region.buffer.subarray(offset - start, offset - start + length), region)
    } finally {
      unmap(region)
    }
  }

  try {
    for (step = 1; step <= ops; step++) {
      const op = pick()
      counts[op] = (counts[op] ?? 0) + 1
      switch (op) {
        case 'read': {
          const [offset, length] = range()
          history.push(`${step} read ${offset} +${length}`)
          const got = Buffer.alloc(length)
          const n = readSync(fd, got, 0, length, offset)
          if (n !== length) fail(`short read ${n} of ${length} at ${offset}`)
          compare(got, offset, 'read')
          break
        }
        case 'write': {
          const [offset, length] = range()
          history.push(`${step} write ${offset} +${length}`)
          const data = model.subarray(offset, offset + length)
          fillRandom(data)
          const n = writeSync(fd, data, 0, length, offset)
          if (n !== length) fail(`short write ${n} of ${length} at ${offset}`)
          break
        }
        case 'mapread': {
          const [offset, length] = range()
          history.push(`${step} mapread ${offset} +${length}`)
          withMap(offset, length, (view) => { compare(Buffer.from(view), offset, 'mapread') })
          break
        }
        case 'mapwrite': {
          const [offset, length] = range()
          history.push(`${step} mapwrite ${offset} +${length}`)
          const data = model.subarray(offset, offset + length)
          fillRandom(data)
          withMap(offset, length, (view, region) => {
            data.copy(view)
            syncRegion(region)
          })
          break
        }
        case 'dread': {
          const [offset, length] = range(block)
          history.push(`${step} dread ${offset} +${length}`)
          const n = preadInto(direct, aligned, length, BigInt(offset))
          if (n !== length) fail(`short O_DIRECT read ${n} of ${length} at ${offset}`)
          compare(Buffer.from(aligned.buffer.subarray(0, length)), offset, 'dread')
          break
        }
        case 'dwrite': {
          const [offset, length] = range(block)
          history.push(`${step} dwrite ${offset} +${length}`)
          const data = model.subarray(offset, offset + length)
          fillRandom(data)
          data.copy(aligned.buffer)
          const n = pwriteFrom(direct, aligned, length, BigInt(offset))
          if (n !== length) fail(`short O_DIRECT write ${n} of ${length} at ${offset}`)
          break
        }
        case 'punch':
        case 'zero': {
          const [offset, length] = range()
          history.push(`${step} ${op} ${offset} +${length}`)
          fallocate(fd, FALLOC_FL_KEEP_SIZE | (op === 'punch' ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE), BigInt(offset), BigInt(length))
          model.fill(0, offset, offset + length)
          break
        }
        case 'seek': {
          const offset = int(size)
          const data = seek(fd, BigInt(offset), SEEK_DATA)
          const hole = seek(fd, BigInt(offset), SEEK_HOLE)
          history.push(`${step} seek ${offset}: data ${data ?? 'ENXIO'} hole ${hole ?? 'ENXIO'}`)
          // Skipped to the next data: nothing skipped over may be data.
          const dataAt = data === null ? size : Number(data)
          if (dataAt < offset || dataAt > size) fail(`SEEK_DATA from ${offset} gave ${dataAt}`)
          if (model.subarray(offset, dataAt).some((b) => b !== 0)) fail(`SEEK_DATA from ${offset} skipped data before ${dataAt}`)
          // A hole reads as zeroes up to the data after it.
          if (hole === null) fail(`SEEK_HOLE from ${offset} inside the file gave ENXIO`)
          const holeAt = Number(hole)
          if (holeAt < offset || holeAt > size) fail(`SEEK_HOLE from ${offset} gave ${holeAt}`)
          if (holeAt < size) {
            const next = seek(fd, BigInt(holeAt), SEEK_DATA)
            const holeEnd = next === null ? size : Number(next)
            if (model.subarray(holeAt, holeEnd).some((b) => b !== 0)) fail(`[${holeAt}, ${holeEnd}) is reported a hole but the model holds data there`)
          }
          break
        }
        case 'fsync':
          history.push(`${step} fsync`)
          fsyncSync(fd)
          break
        case 'trunc':
          history.push(`${step} trunc (open O_TRUNC)`)
          closeSync(openSync(file, constants.O_WRONLY | constants.O_TRUNC))
          model.fill(0)
          break
      }
      if (history.length > HISTORY) history.shift()
      if (options.progress !== undefined && step % (options.progressEvery ?? 1000) === 0) options.progress(step)
    }
    step = ops
    // The whole file, once more, against the model.
    const all = Buffer.alloc(size)
    for (let at = 0; at < size;) at += readSync(fd, all, at, Math.min(1 << 20, size - at), at)
    compare(all, 0, 'final read of the whole file')
  } finally {
    unmap(aligned)
    closeSync(direct)
    closeSync(fd)
  }
  return { counts }
}
