/**
 * nobody reading root's daemon through every `show` view: a multipath mount whose second path
 * authenticates with a PSK (user part and tls-psk-file in the URI, and in `paths`), a mount
 * that failed because its PSK identity is not in the key file. nobody sees where the mounts
 * are and how they are doing, never the identity, the key file or the in-flight offsets.
 */
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { after, test } from 'node:test'
import '../helpers/assert.ts'
import { packageFor } from '../helpers/cli.ts'
import { startDaemon } from '../helpers/daemon.ts'
import { asNobody } from '../helpers/mounts.ts'
import { startNbdkit } from '../helpers/servers.ts'
import { scene } from './scene.ts'

const { root } = scene()
const cleanups: Array<() => Promise<void>> = []
after(async () => { for (const c of cleanups.reverse()) await c() })

test('no show view gives nobody a PSK identity, a key file, a path URI\'s query or an I/O offset', async () => {
  const server = await startNbdkit(root, ['memory', '8M'], 'views')
  cleanups.push(() => server.stop('SIGKILL'))
  const serverPsk = path.join(root, 'server.psk')
  writeFileSync(serverPsk, 'alice:00112233445566778899aabbccddeeff\n', { mode: 0o600 })
  const tlsServer = await startNbdkit(root, ['--tls=require', `--tls-psk=${serverPsk}`, 'memory', '8M'], 'views-tls')
  cleanups.push(() => tlsServer.stop('SIGKILL'))
  const pskFile = path.join(root, 'secret-keys.psk')
  writeFileSync(pskFile, 'alice:0123456789abcdef0123456789abcdef\n', { mode: 0o600 })
  // Path 2: the wrong key for alice. A mount of its own: an identity the key file does not have.
  const pathUri = `nbds+unix://alice@/?socket=${tlsServer.socket}&tls-psk-file=${pskFile}`
  const pskUri = `nbds+unix://svc-backup@/?socket=${tlsServer.socket}&tls-psk-file=${pskFile}`
  const multi = path.join(root, 'multi.img')
  const failing = path.join(root, 'failing.img')
  writeFileSync(multi, '')
  writeFileSync(failing, '')
  const d = await startDaemon(root, 'views', { config: '[defaults]\nconnections = 1\n' })
  cleanups.push(() => d.stop())
  assert.equal((await d.ctl('add', 'mount', server.uri(), multi, 'paths', pathUri, 'polling-interval', '200ms')).text, 'ok')
  assert.equal((await d.ctl('add', 'mount', pskUri, failing)).text, 'ok')
  await d.waitFor(multi, 'up')
  await d.waitFor(failing, 'failed')
  // Root sees why: the identity and the key file (so the attack has something to leak).
  for (let i = 0; !/alice/.test((await d.ctl('show', 'paths')).text); i++) {
    assert.ok(i < 200, `path 2 failed its check: ${(await d.ctl('show', 'paths')).text}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  assert.match((await d.ctl('show', 'mounts')).text, /svc-backup/, 'root sees the failure as it is')
  assert.match((await d.ctl('show', 'mount', multi, 'config')).text, /secret-keys\.psk/, 'root sees the paths whole')

  const cli = path.join(packageFor('nobody', root), 'dist/cli/main.js')
  const ctl = (...words: string[]): ReturnType<typeof asNobody> => asNobody(process.execPath, [cli, 'ctl', '--socket', d.socket, ...words])
  const views = [['show', 'mounts'], ['show', 'mounts', 'json'], ['show', 'config'], ['show', 'config', 'json'], ['show', 'status'],
    ['show', 'paths'], ['show', 'paths', 'json'], ['show', 'mount', multi, 'config'], ['show', 'mount', multi, 'paths'], ['show', 'mount', multi, 'connections', 'json'],
    ['show', 'mount', failing, 'status'], ['show', 'mount', failing, 'status', 'json'], ['show', 'mount', failing, 'config']]
  for (const words of views) {
    const r = await ctl(...words)
    assert.equal(r.code, 0, `${words.join(' ')}: ${r.stderr}`)
    for (const secret of ['svc-backup', 'alice', 'secret-keys', pskFile, 'socket=', 'tls-psk-file']) {
      assert.ok(!r.stdout.includes(secret), `${words.join(' ')} shows nobody "${secret}":\n${r.stdout}`)
    }
  }
  // What nobody does see: the failure's class and code.
  assert.match((await ctl('show', 'mount', failing, 'status')).stdout, /error: \w+Error \(NBD_ERR_[A-Z_]+/)
  const requests = JSON.parse((await ctl('show', 'mount', multi, 'requests', 'json')).stdout) as Record<string, unknown>
  assert.equal(requests.nbd, undefined, 'no offsets for nobody')
  assert.equal(typeof requests.nbdInFlight, 'number')
  assert.ok(Array.isArray((JSON.parse((await d.ctl('show', 'mount', multi, 'requests', 'json')).text) as Record<string, unknown>).nbd), 'root sees them')
})
