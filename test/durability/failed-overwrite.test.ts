/**
 * Defect 1: a newer write that does not succeed must not erase the older acknowledged write of
 * the same range from the write ledger. W1 is acknowledged (held only in nbdkit's writeback
 * cache); W2 to the same range fails (EIO), is aborted by its caller while the server runs it,
 * or dies with the server; the server is killed (-9) and restarted; the FLUSH after it
 * succeeds, so the range must read W1 (or W2, where W2 may have run) — never the zeroes the
 * file held before — and the file must hold it once the server is killed again.
 */
import assert from 'node:assert/strict'
import { readFileSync, rmSync, writeFileSync } from 'node:fs'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { NbdClient } from '../../src/index.ts'
import { handled, within } from '../helpers/assert.ts'
import { connected, durabilityScene, KiB, MiB, pattern, QUICK_BACKOFF, volatileFile, whose } from './scene.ts'

const scene = durabilityScene()
const LEN = 64 * KiB
const W1 = 1
const W2 = 2

/** The range at 0 in the image file (after the server is gone: only what reached the file). */
function onDisk (image: string): Buffer {
  return readFileSync(image).subarray(0, LEN)
}

describe('a failed newer write does not erase the older acknowledged one', () => {
  test('W2 answered EIO: after kill -9 and restart the FLUSH succeeds and the range is W1, in the client and on disk', async () => {
    const image = scene.image('eio.img', 4 * MiB)
    const inject = scene.file('eio.inject')
    // The error filter is outermost: a failed W2 never reaches the cache.
    const server = await scene.nbdkit('eio', volatileFile(image, ['error'], ['error-pwrite=EIO', 'error-pwrite-rate=100%', `error-pwrite-file=${inject}`]))
    const client = scene.client(await NbdClient.connect(server.uri(), { reconnectDelay: 10_000, backoff: QUICK_BACKOFF }))
    await client.write(pattern(W1, LEN), 0)
    writeFileSync(inject, '')
    await assert.rejects(client.write(pattern(W2, LEN), 0), /EIO|error/i, 'W2 fails')
    rmSync(inject)
    await server.stop('SIGKILL')
    await server.restart()
    await within(client.flush(), 15_000, 'the FLUSH after the restart')
    assert.equal(whose(await client.read(LEN, 0), [W1, W2]), W1, 'the range reads W1 after the restart')
    await client.close()
    await server.stop('SIGKILL')
    assert.equal(whose(onDisk(image), [W1, W2]), W1, 'the FLUSH made W1 durable')
  })

  test('W2 aborted by its caller while the server runs it: after kill -9 the range is W1 or W2, never zeroes', async () => {
    const image = scene.image('abort.img', 4 * MiB)
    // Every write waits 1.5 s in the delay filter (outside the cache): W2 is still there when
    // the server dies, and never reaches the cache.
    const server = await scene.nbdkit('abort', volatileFile(image, ['delay'], ['delay-write=1500ms']))
    const client = scene.client(await NbdClient.connect(server.uri(), { reconnectDelay: 10_000, backoff: QUICK_BACKOFF }))
    await client.write(pattern(W1, LEN), 0)
    const abort = new AbortController()
    const w2 = handled(client.write(pattern(W2, LEN), 0, { signal: abort.signal }))
    await sleep(300)
    abort.abort()
    await assert.rejects(within(w2, 5000, 'the aborted W2'))
    await server.stop('SIGKILL')
    // The same socket, without the delay.
    const again = await scene.nbdkit('abort', volatileFile(image))
    await within(client.flush(), 15_000, 'the FLUSH after the restart')
    const seen = whose(await client.read(LEN, 0), [W1, W2])
    assert.ok(seen === W1 || seen === W2, `the range reads W1 or W2 after the restart, not ${seen === 0 ? 'zeroes' : 'other data'}`)
    await client.close()
    await again.stop('SIGKILL')
    assert.equal(whose(onDisk(image), [W1, W2]), seen, 'the FLUSH made what the client read durable')
  })

  test('the server killed under W2 (reconnectDelay 0: W2 fails): after the restart the range is W1 or W2, never zeroes', async () => {
    const image = scene.image('kill.img', 4 * MiB)
    const server = await scene.nbdkit('kill', volatileFile(image, ['delay'], ['delay-write=1500ms']))
    const client = scene.client(await NbdClient.connect(server.uri(), { reconnectDelay: 0, requestTimeout: 20_000, backoff: QUICK_BACKOFF }))
    await client.write(pattern(W1, LEN), 0)
    const w2 = handled(client.write(pattern(W2, LEN), 0))
    await sleep(300)
    await server.stop('SIGKILL')
    await assert.rejects(within(w2, 5000, 'W2 on the killed server'))
    const again = await scene.nbdkit('kill', volatileFile(image))
    await connected(client)
    await within(client.flush(), 15_000, 'the FLUSH after the restart')
    const seen = whose(await client.read(LEN, 0), [W1, W2])
    assert.ok(seen === W1 || seen === W2, `the range reads W1 or W2 after the restart, not ${seen === 0 ? 'zeroes' : 'other data'}`)
    await client.close()
    await again.stop('SIGKILL')
    assert.equal(whose(onDisk(image), [W1, W2]), seen, 'the FLUSH made what the client read durable')
  })
})
