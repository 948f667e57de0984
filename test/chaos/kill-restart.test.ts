/**
 * Chaos, bounded: ten kill -9 / restart cycles of the server under a write + verify load, for
 * the library (over a server that loses unflushed writes when it dies: the replay log must
 * bring them back) and for a mount (fio with crc32c verification). Nothing may fail, and
 * nothing acknowledged may be lost.
 */
import assert from 'node:assert/strict'
import { randomInt } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { after, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { NbdClient } from '../../src/index.ts'
import { within } from '../helpers/assert.ts'
import { writeVerifyLoad } from '../helpers/load.ts'
import { mountExport } from '../helpers/mounts.ts'
import { run, startNbdkit, tempDir, type RunningServer } from '../helpers/servers.ts'

const dir = tempDir()
const stops: Array<() => Promise<void>> = []
after(async () => { await Promise.all(stops.map((s) => s())) })
const MiB = 1 << 20
const CYCLES = 10

/** Kills and restarts `server` CYCLES times: down 50–500 ms, up 300–900 ms. */
async function chaos (server: RunningServer): Promise<void> {
  for (let i = 0; i < CYCLES; i++) {
    await sleep(300 + randomInt(600))
    await server.stop('SIGKILL')
    await sleep(50 + randomInt(450))
    await server.restart()
  }
  await sleep(300)
}

describe('kill -9 / restart cycles under load', () => {
  test(`library: ${CYCLES} crashes of a server that loses unflushed writes; every acknowledged byte survives`, async () => {
    const image = path.join(dir, 'lib.img')
    writeFileSync(image, Buffer.alloc(16 * MiB))
    const server = await startNbdkit(dir, ['--filter=cache', 'file', image, 'cache=writeback'], 'lib')
    stops.push(() => server.stop('SIGKILL'))
    const client = await NbdClient.connect(server.uri(), { maxInFlight: 32, reconnectDelay: 20_000 })
    const model = Buffer.alloc(16 * MiB)
    let stop = false
    const load = writeVerifyLoad(client, model, () => stop, { workers: 32, maxWrite: 16_384, flushEvery: 50 })
    load.catch(() => {})
    await chaos(server)
    stop = true
    const rounds = await within(load, 30_000, 'the load')
    assert.ok(rounds > 200, `the load ran (${rounds} write + verify rounds)`)
    assert.ok(client.stats().reconnects >= CYCLES, `reconnected after each crash (${client.stats().reconnects})`)
    assert.equal(client.stats().failedByDelay, 0)
    await client.flush()
    await client.close()
    await server.stop()
    assert.ok(readFileSync(image).equals(model), 'after the last FLUSH the image holds every acknowledged write')
  })

  test(`mount: ${CYCLES} kill -9 / restarts under fio randwrite with crc32c verification`, async () => {
    const image = path.join(dir, 'mnt.img')
    writeFileSync(image, Buffer.alloc(32 * MiB))
    const server = await startNbdkit(dir, ['file', image], 'mnt')
    stops.push(() => server.stop('SIGKILL'))
    const m = await mountExport(dir, server.uri(), 'chaos.img', ['--reconnect-delay', '20s', '--connections', '1'])
    stops.push(() => m.unmount())
    const fio = run('fio', ['--name=chaos', `--filename=${m.file}`, '--rw=randwrite', '--bs=4k', '--iodepth=16', '--ioengine=libaio',
      '--direct=1', '--size=32M', '--verify=crc32c', '--verify_fatal=1', '--verify_backlog=64', '--time_based', '--runtime=14',
      '--output-format=json'], { timeoutMs: 90_000 })
    fio.catch(() => {})
    await sleep(1000)
    await chaos(server)
    const { stdout } = await fio
    const job = (JSON.parse(stdout.toString()) as { jobs: Array<{ error: number, write: { io_bytes: number }, read: { io_bytes: number } }> }).jobs[0]!
    assert.equal(job.error, 0, 'fio saw no error and every verification passed')
    assert.ok(job.write.io_bytes > 0 && job.read.io_bytes > 0, 'it wrote and verified')
    await m.unmount()
  })
})
