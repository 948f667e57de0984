/**
 * Interop with nbd-server 3.24: no structured replies, no meta contexts, LIST only with
 * allowlist, INFO reporting size 0 (GO is authoritative) and ABORT answered by a reset.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { after, before, describe, test } from 'node:test'
import { NbdClient } from '../../src/index.ts'
import { rejectsWithCode } from '../helpers/assert.ts'
import { startNbdServer, tempDir, type RunningServer } from '../helpers/servers.ts'

const dir = tempDir()
const disk = path.join(dir, 'disk.img')
const ro = path.join(dir, 'ro.img')
let server: RunningServer

before(async () => {
  writeFileSync(disk, Buffer.alloc(4 << 20))
  writeFileSync(ro, Buffer.alloc(1 << 20, 0x77))
  server = await startNbdServer(dir, {
    disk: { exportname: disk, flush: 'true', fua: 'true', trim: 'true' },
    ro: { exportname: ro, readonly: 'true' }
  })
})
after(async () => { await server.stop() })

describe('nbd-server', () => {
  test('simple replies: every byte written lands in the file', async () => {
    const client = await NbdClient.connect(server.uri('disk'))
    assert.equal(client.info.mode, 'simple')
    assert.equal(client.size, 4 << 20)
    assert.deepEqual(client.metaContexts, [])
    const data = randomBytes(3 << 20)
    await client.write(data, 12345, { fua: true })
    await client.flush()
    assert.ok((await client.read(3 << 20, 12345)).equals(data))
    await client.trim(4096, 0)
    await client.writeZeroes(10, 12345)
    await rejectsWithCode(client.blockStatus(4096, 0), 'NBD_ERR_NOT_SUPPORTED')
    await client.close()
    const file = readFileSync(disk)
    assert.ok(file.subarray(12355, 12345 + (3 << 20)).equals(data.subarray(10)))
    assert.ok(file.subarray(12345, 12355).equals(Buffer.alloc(10)))
  })

  test('listing, read-only export and an unknown export', async () => {
    const exports = await NbdClient.list(server.uri())
    assert.deepEqual(exports.map((e) => e.name).sort(), ['disk', 'ro'])
    const client = await NbdClient.connect(server.uri('ro'))
    assert.ok((await client.read(1 << 20, 0)).equals(Buffer.alloc(1 << 20, 0x77)))
    await rejectsWithCode(client.write(Buffer.alloc(1), 0), 'NBD_ERR_NOT_SUPPORTED', 1000, /read-only/)
    await client.close()
    await rejectsWithCode(NbdClient.connect(server.uri('nope')), 'NBD_ERR_HANDSHAKE', 5000, /no export named "nope"/)
  })
})
