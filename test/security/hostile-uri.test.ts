/**
 * A URI from an application's caller: it may not make the library read local files (a PSK
 * file, a key directory) or learn whether one exists, and the application decides which
 * transports and TLS settings URIs may ask for (libnbd's nbd_set_uri_allow_*). What the
 * application passes as options, and what our own CLI's user types, stays trusted.
 */
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { after, test } from 'node:test'
import { NbdClient } from '../../src/index.ts'
import { rejectsWithCode } from '../helpers/assert.ts'
import { nbdts } from '../helpers/cli.ts'
import { FakeServer } from '../helpers/fake-server.ts'
import { startNbdkit, tempDir, type RunningServer } from '../helpers/servers.ts'
import { makePsk } from '../helpers/tls-keys.ts'

const dir = tempDir()
const psk = makePsk(path.join(dir, 'psk'), ['alice'])
const notPsk = path.join(dir, 'passwd')
writeFileSync(notPsk, 'root:x:0:0:root:/root:/bin/bash\n')
const missing = path.join(dir, 'nothing-here')

const servers: RunningServer[] = []
const fakes: FakeServer[] = []
after(async () => {
  await Promise.all(servers.map((s) => s.stop('SIGKILL')))
  await Promise.all(fakes.map((f) => f.close()))
})

test('a URI naming a local file is refused before the file is touched, the same way whatever the file is', async () => {
  const fake = await FakeServer.start(async (peer) => { await peer.closed() })
  fakes.push(fake)
  const messages: string[] = []
  for (const file of [psk, notPsk, missing, dir]) {
    for (const param of ['tls-psk-file', 'tls-certificates']) {
      const err = await rejectsWithCode(NbdClient.connect(`nbds+unix://alice@/?socket=${fake.socket}&${param}=${file}`), 'NBD_ERR_URI', 5000, /names a local file/)
      messages.push(err.message.replace(file, 'FILE'))
      assert.ok(!/exist|ENOENT|EACCES|username|alice|root/.test(err.message), err.message)
    }
  }
  assert.equal(new Set(messages.filter((m) => m.includes('tls-psk-file'))).size, 1, 'one message for every PSK path')
  assert.equal(new Set(messages.filter((m) => m.includes('tls-certificates'))).size, 1, 'one message for every certificate path')
  assert.equal(fake.peers.length, 0, 'nothing was connected to')
  // NbdClient.list resolves its target the same way.
  await rejectsWithCode(NbdClient.list(`nbds+unix:///?socket=${fake.socket}&tls-psk-file=${psk}`), 'NBD_ERR_URI', 5000)
})

test('options the application passes stay trusted; allowLocalFile trusts the URI', async () => {
  const s = await startNbdkit(dir, ['--tls=require', `--tls-psk=${psk}`, 'memory', '1M'], 'psk')
  servers.push(s)
  const a = await NbdClient.connect(`nbds+unix://alice@/?socket=${s.socket}`, { tlsPskFile: psk })
  assert.equal(a.info.tls, true)
  await a.close()
  const b = await NbdClient.connect(`nbds+unix://alice@/?socket=${s.socket}&tls-psk-file=${psk}`, { allowLocalFile: true })
  assert.equal(b.info.tls, true)
  await b.close()
  // The command line's user typed the URI: it may name files.
  const info = await nbdts(['info', `nbds+unix://alice@/?socket=${s.socket}&tls-psk-file=${psk}`])
  assert.equal(info.code, 0, info.stderr)
})

test('even when trusted, credential errors do not tell a missing file from a private one', async () => {
  const fake = await FakeServer.start(async (peer) => { await peer.closed() })
  fakes.push(fake)
  // ENOENT for one, ENOTDIR for the other (as root nothing is EACCES): the same message.
  const underAFile = path.join(notPsk, 'x')
  const messages = []
  for (const file of [missing, underAFile]) {
    const err = await rejectsWithCode(NbdClient.connect(`nbds+unix://alice@/?socket=${fake.socket}`, { tlsPskFile: file }), 'NBD_ERR_TLS', 5000)
    assert.equal(err.cause, undefined, 'no errno behind it either')
    messages.push(err.message.replace(file, 'FILE'))
  }
  assert.deepEqual(messages, ['cannot read the PSK file FILE', 'cannot read the PSK file FILE'])
  const wrong = await rejectsWithCode(NbdClient.connect(`nbds+unix://alice@/?socket=${fake.socket}`, { tlsPskFile: notPsk }), 'NBD_ERR_TLS', 5000)
  assert.ok(!wrong.message.includes('root'), `no text of the file is quoted: ${wrong.message}`)
  assert.ok(!/:\d+:/.test(wrong.message), `nor a line number: ${wrong.message}`)
})

test('allowTransports and allowTls limit what a URI may ask for; the address option is not a URI', async () => {
  const fake = await FakeServer.start(async (peer) => { await peer.negotiate() })
  fakes.push(fake)
  await rejectsWithCode(NbdClient.connect(`nbd+unix:///?socket=${fake.socket}`, { allowTransports: ['tcp'] }), 'NBD_ERR_URI', 5000, /Unix-socket URIs are not allowed/)
  await rejectsWithCode(NbdClient.connect('nbd://127.0.0.1:1/', { allowTransports: ['unix'] }), 'NBD_ERR_URI', 5000, /TCP URIs are not allowed/)
  await rejectsWithCode(NbdClient.connect(`nbd+unix:///?socket=${fake.socket}`, { allowTls: 'require' }), 'NBD_ERR_URI', 5000, /only TLS URIs/)
  await rejectsWithCode(NbdClient.connect(`nbds+unix:///?socket=${fake.socket}`, { allowTls: 'disable' }), 'NBD_ERR_URI', 5000, /TLS URIs \(nbds:\/\/\) are not allowed/)
  assert.equal(fake.peers.length, 0)
  const client = await NbdClient.connect({ address: { transport: 'unix', path: fake.socket }, allowTransports: ['tcp'], handshakeTimeout: 5000 })
  assert.equal(client.size, 1024 * 1024)
  client.destroy()
})
