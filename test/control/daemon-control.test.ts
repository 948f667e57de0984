/**
 * DaemonControl without a mount: reconfigure coalescing and set, against stand-ins for the
 * client and the mount (only the members DaemonControl touches).
 */
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import '../helpers/assert.ts'
import type { NbdClient } from '../../src/client/nbd-client.ts'
import { ConfigLock } from '../../src/control/config-lock.ts'
import { DaemonControl } from '../../src/control/daemon-control.ts'
import { parseCommand } from '../../src/control/grammar.ts'
import type { FuseMount } from '../../src/fuse/fuse-mount.ts'
import { tempDir } from '../helpers/servers.ts'

function rig (configFile: string | undefined): { control: DaemonControl, lock: ConfigLock, client: { reconnectDelay: number, maxInFlight: number }, levels: string[] } {
  const client = { reconnectDelay: 0, maxInFlight: 64 }
  const levels: string[] = []
  const lock = new ConfigLock()
  const control = new DaemonControl({
    uri: 'nbd+unix:///?socket=/nowhere',
    client: client as unknown as NbdClient,
    mount: {} as unknown as FuseMount,
    settings: { reconnectDelay: 0, openTimeout: 0, maxInFlight: 64, logLevel: 'info', controlTimeout: 4000 },
    setLogLevel: (level) => { levels.push(level) },
    configFile,
    requestShutdown: () => {},
    log: () => {}
  }, lock)
  return { control, lock, client, levels }
}

const run = async (control: DaemonControl, line: string): Promise<string> => {
  const client = { id: 1, state: 'WORK', privileged: true, uid: 0, pid: process.pid, connectedMs: 0, requests: 1 } as const
  return await control.run(parseCommand(line), { client })
}

test('reconfigure requests that arrive while one waits or runs make one more run, not one each', async () => {
  const file = path.join(tempDir(), 'nbdts.conf')
  writeFileSync(file, 'reconnect-delay = 7s\nmax-in-flight = 9\nlog-level = debug\n')
  const { control, lock, client, levels } = rig(file)
  const release = await lock.mutex.acquire()
  for (let i = 0; i < 10; i++) assert.equal(await run(control, 'reconfigure'), 'ok')
  await sleep(50)
  assert.equal(client.maxInFlight, 64, 'nothing applied while the lock is held')
  release()
  for (let i = 0; i < 100 && !/reconfigures: 2/.test(await run(control, 'show config')); i++) await sleep(10)
  await sleep(50)
  const shown = await run(control, 'show config')
  assert.match(shown, /reconfigures: 2\b/, 'the first run plus one for the nine that came meanwhile')
  assert.equal(client.maxInFlight, 9)
  assert.equal(client.reconnectDelay, 7000)
  assert.deepEqual(levels, ['debug', 'debug'])
})

test('reconfigure without --config, and set, report clearly', async () => {
  const { control, client } = rig(undefined)
  await assert.rejects(run(control, 'reconfigure'), /no --config file/)
  assert.equal(await run(control, 'set reconnect-delay 250ms'), 'ok')
  assert.equal(client.reconnectDelay, 250)
  assert.equal(await run(control, 'set max-in-flight 3'), 'ok')
  assert.equal(client.maxInFlight, 3)
})

test('show renders what a server said (a connection\'s last error) with its control characters escaped', async () => {
  const { control, client } = rig(undefined)
  Object.assign(client, {
    connectionInfo: () => [{ connection: 1, state: 'CONNECTING_WAIT', inFlight: 0, queued: 0, lastError: 'EIO: bad\nstate: CONNECTED\x1b[2J', stats: {} }]
  })
  const shown = await run(control, 'show connections')
  assert.match(shown, /^lastError: EIO: bad\\nstate: CONNECTED\\x1b\[2J$/m)
  assert.equal(shown.split('\n').filter((l) => l.startsWith('state:')).length, 1, 'no forged line')
})
