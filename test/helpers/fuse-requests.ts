/** FUSE requests as the kernel writes them, for driving the dispatcher without a kernel. */
import { FUSE_ROOT_ID, IN_HEADER } from '../../src/fuse/abi.ts'

/** struct fuse_in_header, then `body`. */
export function fuseRequest (opcode: number, unique: number, body: Buffer, nodeid = FUSE_ROOT_ID): Buffer {
  const b = Buffer.alloc(IN_HEADER + body.length)
  b.writeUInt32LE(b.length, 0)
  b.writeUInt32LE(opcode, 4)
  b.writeBigUInt64LE(BigInt(unique), 8)
  b.writeBigUInt64LE(BigInt(nodeid), 16)
  body.copy(b, IN_HEADER)
  return b
}
