/**
 * A local regular file or block device as either end of a copy, read and written at offsets
 * (pread/pwrite on libuv's thread pool).
 *
 * A regular destination file is created or truncated to nothing and then extended to the
 * source's size, so it starts as one hole that reads zeroes (as qemu-img convert and cp make
 * their targets): zero runs are then skipped and the file stays sparse (`du` shows only the
 * data). A block device keeps its size; its zero runs are written as zeroes (Node has no
 * BLKZEROOUT/fallocate; --destination-is-zero skips them when the device is known to be zero).
 * A block device's size comes from /sys/dev/block/MAJ:MIN/size, since fstat says 0.
 */
// node:fs/promises (which loads readline's and the watchers' code) is imported when a file is
// opened: a copy between NBD exports, or to null:, has no use for it.
import type { FileHandle } from 'node:fs/promises'
import type { Stats } from 'node:fs'
import { InvalidArgumentError } from '../errors.ts'
import { writeZeroBytes, type CopyDestination, type CopySource } from './endpoint.ts'

async function deviceSize (stats: Stats, name: string): Promise<number> {
  if (!stats.isBlockDevice()) return stats.size
  const major = Math.floor(stats.rdev / 256) & 0xfff
  const minor = (stats.rdev & 0xff) | ((Math.floor(stats.rdev / 0x100000) & 0xfff) << 8)
  try {
    const { readFile } = await import('node:fs/promises')
    const sectors = Number((await readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')).trim())
    return sectors * 512
  } catch (err) {
    throw new InvalidArgumentError(`${name}: cannot tell the block device's size: ${(err as Error).message}`)
  }
}

async function readFully (fh: FileHandle, buffer: Buffer, offset: number, name: string): Promise<void> {
  let done = 0
  while (done < buffer.length) {
    const { bytesRead } = await fh.read(buffer, done, buffer.length - done, offset + done)
    if (bytesRead === 0) throw new InvalidArgumentError(`${name}: the file ended at ${offset + done} (it shrank during the copy?)`)
    done += bytesRead
  }
}

async function writeFully (fh: FileHandle, data: Buffer, offset: number): Promise<void> {
  let done = 0
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, offset + done)
    done += bytesWritten
  }
}

export async function fileSource (path: string, stats: Stats): Promise<CopySource> {
  const { open } = await import('node:fs/promises')
  const fh = await open(path, 'r')
  try {
    const size = await deviceSize(stats, path)
    return {
      name: path,
      size,
      connections: 1,
      preferredBlockSize: undefined,
      readInto: (buffer, offset) => readFully(fh, buffer, offset, path),
      close: () => fh.close()
    }
  } catch (err) {
    await fh.close()
    throw err
  }
}

/** `stats`: the destination as it is now, undefined when it does not exist yet. */
export async function fileDestination (path: string, stats: Stats | undefined, sourceSize: number | undefined): Promise<CopyDestination> {
  const device = stats?.isBlockDevice() === true
  const { open } = await import('node:fs/promises')
  const fh = await open(path, device ? 'r+' : 'w')
  try {
    let size: number | undefined
    if (device) {
      size = await deviceSize(stats!, path)
    } else if (sourceSize !== undefined) {
      await fh.truncate(sourceSize)
      size = sourceSize
    }
    const write = (data: Buffer, offset: number): Promise<void> => writeFully(fh, data, offset)
    return {
      name: path,
      size,
      connections: 1,
      preferredBlockSize: undefined,
      seekable: true,
      startsZero: !device,
      write,
      // A truncated file reads zeroes wherever nothing was written: a hole needs nothing (the
      // copier skips zero runs when startsZero); --allocated and devices get written zeroes.
      zero: (offset, length) => writeZeroBytes(write, offset, length),
      flush: () => fh.datasync(),
      // Trailing zeroes from a pipe were skipped as holes: the length makes them read back.
      ...(!device && sourceSize === undefined && { setSize: (n: number) => fh.truncate(n) }),
      close: () => fh.close()
    }
  } catch (err) {
    await fh.close()
    throw err
  }
}
