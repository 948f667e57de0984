/**
 * nobody against root's `nbdts daemon`: `add mount` runs with root's rights, so it is played as
 * an attack. nobody cannot add or remove mounts at all; root's own `add mount` never mounts over
 * a root file through nobody's link, nor anywhere nobody could swap the path; and what nobody
 * may `show` does not give away how a mount authenticates.
 */
import assert from 'node:assert/strict'
import { chmodSync, symlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { after, test } from 'node:test'
import '../helpers/assert.ts'
import { packageFor } from '../helpers/cli.ts'
import { startDaemon } from '../helpers/daemon.ts'
import { asNobody, isMounted } from '../helpers/mounts.ts'
import { startNbdkit } from '../helpers/servers.ts'
import { assertUntouched, scene } from './scene.ts'

const { root, theirs, victim } = scene()
const cleanups: Array<() => Promise<void>> = []
after(async () => { for (const c of cleanups.reverse()) await c() })

test('nobody may show but not add or del; root\'s add mount refuses nobody\'s link and nobody\'s directory; show hides credentials from nobody', async () => {
  const server = await startNbdkit(root, ['memory', '8M'], 'attack')
  cleanups.push(() => server.stop('SIGKILL'))
  const mine = path.join(root, 'mine.img')
  writeFileSync(mine, '')
  const pskFile = path.join(root, 'keys.psk')
  writeFileSync(pskFile, 'alice:0123456789abcdef0123456789abcdef\n', { mode: 0o600 })
  // The query names a key file; [defaults] a PSK file and user: none of it is nobody's business.
  const uri = `${server.uri()}&tls-psk-file=${pskFile}`
  const d = await startDaemon(root, 'attack', {
    config: `[defaults]\nconnections = 1\ntls-username = "alice"\ntls = "off"\n\n[[mount]]\nuri = "${server.uri()}"\nfile = "${mine}"\n`
  })
  cleanups.push(() => d.stop())
  assert.match(d.ready, /1 mount: 1 up/, d.logText())
  chmodSync(d.socket, 0o666)
  const cli = path.join(packageFor('nobody', root), 'dist/cli/main.js')
  const ctl = (...words: string[]): ReturnType<typeof asNobody> => asNobody(process.execPath, [cli, 'ctl', '--socket', d.socket, ...words])

  const planted = path.join(theirs, 'disk.img')
  for (const words of [['add', 'mount', server.uri(), planted], ['del', 'mount', mine, 'force'], ['set', 'mount', mine, 'max-in-flight', '1'],
    ['disconnect', 'mount', mine], ['reconfigure'], ['shutdown', 'force'], ['add', 'mount', uri, mine, 'persist']]) {
    const r = await ctl(...words)
    assert.equal(r.code, 1, words.join(' '))
    assert.match(r.stderr, /permission denied: ".*" changes the daemon and needs root/, words.join(' '))
  }
  assert.equal(isMounted(mine), true, 'nothing changed')
  assert.deepEqual((await d.mounts()).map((m) => m.file), [mine])

  // Root itself asked (say, by a script fed nobody's paths): a link to a root file, a file in nobody's directory.
  const secret = victim()
  const link = path.join(theirs, 'link.img')
  symlinkSync(secret, link)
  writeFileSync(planted, '')
  assert.equal((await d.ctl('add', 'mount', server.uri(), link)).text, 'ok')
  assert.equal((await d.ctl('add', 'mount', server.uri(), planted)).text, 'ok')
  await d.waitFor(link, 'failed')
  await d.waitFor(planted, 'failed')
  const rows = await d.mounts()
  assert.match(rows.find((m) => m.file === link)!.error!, /refusing to mount over .*link\.img: .*(symbolic link|owned by uid)/)
  assert.match(rows.find((m) => m.file === planted)!.error!, /refusing to mount over .*disk\.img: .* is owned by uid \d+, who could replace/)
  assert.equal(isMounted(link) || isMounted(planted) || isMounted(secret), false)
  assertUntouched(secret)
  assert.equal((await d.ctl('add', 'mount', server.uri(), path.join(mine, 'inside'))).ok, false, 'nothing inside a mount of ours')

  // What nobody sees.
  assert.equal((await d.ctl('add', 'mount', uri, path.join(root, 'psk.img'))).text, 'ok')
  for (const words of [['show', 'mounts'], ['show', 'mounts', 'json'], ['show', 'config'], ['show', 'status', 'json'], ['show', 'mount', mine, 'config']]) {
    const r = await ctl(...words)
    assert.equal(r.code, 0, `${words.join(' ')}: ${r.stderr}`)
    assert.ok(!r.stdout.includes('socket='), `${words.join(' ')} shows no URI query: ${r.stdout}`)
    assert.ok(!r.stdout.includes(pskFile) && !r.stdout.includes('alice'), `${words.join(' ')} shows no credentials: ${r.stdout}`)
  }
  assert.match((await ctl('show', 'mount', mine, 'config')).stdout, /tls-username: \(hidden\)/)
  assert.match((await ctl('show', 'mounts')).stdout, /nbd\+unix:\/\/\/\?…/)
  assert.match((await d.ctl('show', 'mount', mine, 'config')).text, /tls-username: alice/, 'root sees it all')
})
