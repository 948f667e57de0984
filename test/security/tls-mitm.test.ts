/**
 * The man in the middle: a server that does not have our PSK but shows a certificate our
 * process trusts, one that refuses STARTTLS when credentials were given, one that drops TLS
 * on a reconnect, and a certificate that only the system's CAs vouch for over a Unix socket.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { after, test } from 'node:test'
import { NbdClient, type NbdClientOptions } from '../../src/index.ts'
import { NBD_OPT, NBD_REP } from '../../src/protocol/constants.ts'
import { rejectsWithCode, within } from '../helpers/assert.ts'
import { FakeServer, type FakePeer } from '../helpers/fake-server.ts'
import { startNbdkit, tempDir, type RunningServer } from '../helpers/servers.ts'
import { makePki, makePsk } from '../helpers/tls-keys.ts'

const dir = tempDir()
const psk = makePsk(path.join(dir, 'psk'), ['alice'])
const key = Buffer.from(readFileSync(psk, 'utf8').trim().split(':')[1]!, 'hex')
// The attacker's PKI: a CA our process trusts, and a certificate for some other name.
const pki = makePki(path.join(dir, 'pki'), 'Attacker')

const servers: RunningServer[] = []
const fakes: FakeServer[] = []
after(async () => {
  await Promise.all(servers.map((s) => s.stop('SIGKILL')))
  await Promise.all(fakes.map((f) => f.close()))
})

const trusted = (options: NbdClientOptions = {}): NbdClientOptions => ({ allowLocalFile: true, ...options })

/**
 * Connects from a child node whose CA store trusts `ca` (NODE_EXTRA_CA_CERTS, read at start:
 * the way a system store would trust it), and reports how it went.
 */
function connectTrusting (ca: string, uri: string): Promise<{ ok: boolean, code?: string, message?: string, cause?: string }> {
  const script = path.join(dir, 'child.mts')
  const entry = pathToFileURL(fileURLToPath(new URL('../../src/index.ts', import.meta.url))).href
  writeFileSync(script, `
    import { NbdClient } from ${JSON.stringify(entry)}
    try {
      const client = await NbdClient.connect(process.argv[2], { allowLocalFile: true, handshakeTimeout: 10000 })
      await client.close()
      console.log(JSON.stringify({ ok: true }))
    } catch (err) {
      console.log(JSON.stringify({ ok: false, code: err.code, message: err.message, cause: err.cause?.message }))
    }
  `)
  return new Promise((resolve, reject) => {
    const root = fileURLToPath(new URL('../..', import.meta.url))
    const child = spawn(process.execPath, ['--import', 'tsx', script, uri], { cwd: root, env: { ...process.env, NODE_EXTRA_CA_CERTS: ca }, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d })
    child.stderr.setEncoding('utf8').on('data', (d: string) => { err += d })
    const timer = setTimeout(() => { child.kill('SIGKILL') }, 30_000)
    child.on('close', () => {
      clearTimeout(timer)
      try {
        resolve(JSON.parse(out.trim().split('\n').pop() ?? '') as { ok: boolean })
      } catch {
        reject(new Error(`child said: ${out}${err}`))
      }
    })
  })
}

test('PSK: a server without the key that shows a trusted certificate (TLS 1.3) is refused', async () => {
  const s = await startNbdkit(dir, ['--tls=require', `--tls-certificates=${pki.dir}`, 'memory', '1M'], 'cert-only')
  servers.push(s)
  const result = await connectTrusting(path.join(pki.dir, 'ca-cert.pem'), `nbds+unix://alice@/?socket=${s.socket}&tls-psk-file=${psk}`)
  assert.equal(result.ok, false, 'the connection must not be made')
  assert.equal(result.code, 'NBD_ERR_TLS')
  assert.match(result.message ?? '', /certificate instead of the PSK/)
  // The chain itself verified (the CA is trusted): it is the PSK rule that refused it.
  assert.equal(result.cause, 'the server authenticated with a certificate instead of the PSK')
})

test('PSK: a TLS 1.2 server with only a certificate shares no cipher suite with us', async () => {
  const fake = await FakeServer.start(async (peer) => {
    await peer.greet()
    const option = await peer.readOption()
    peer.replyOption(option.option, NBD_REP.ACK)
    await peer.startTls({
      maxVersion: 'TLSv1.2',
      cert: readFileSync(path.join(pki.dir, 'server-cert.pem')),
      key: readFileSync(path.join(pki.dir, 'server-key.pem'))
    }).catch(() => {})
  })
  fakes.push(fake)
  await rejectsWithCode(NbdClient.connect(`nbds+unix://alice@/?socket=${fake.socket}&tls-psk-file=${psk}`, trusted()), 'NBD_ERR_TLS', 10_000)
})

/** A server that does PSK TLS on its first connection and refuses STARTTLS on later ones. */
async function downgradingServer (): Promise<FakeServer> {
  return await FakeServer.start(async (peer: FakePeer, index: number) => {
    await peer.greet()
    const option = await peer.readOption()
    assert.equal(option.option, NBD_OPT.STARTTLS)
    if (index === 0) {
      peer.replyOption(option.option, NBD_REP.ACK)
      await peer.startTls({ pskCallback: (_socket, identity) => identity === 'alice' ? key : null, ciphers: 'TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256' })
      await peer.negotiate({ skipGreeting: true })
      const r = await peer.readRequest()
      peer.simpleReply(r.cookie, 0, Buffer.alloc(Number(r.length), 1))
      // The next request finds the connection gone: the client reconnects.
      await peer.readRequest()
      peer.destroy()
      return
    }
    peer.replyOption(option.option, NBD_REP.ERR_POLICY)
    await peer.negotiate({ skipGreeting: true })
    for (;;) {
      const r = await peer.readRequest()
      peer.simpleReply(r.cookie, 0, Buffer.alloc(Number(r.length), 0x66))
    }
  })
}

test('credentials on an nbd+unix:// URI require TLS: a server that refuses STARTTLS gets nothing', async () => {
  const fake = await FakeServer.start(async (peer) => {
    await peer.greet()
    const option = await peer.readOption()
    peer.replyOption(option.option, NBD_REP.ERR_POLICY)
    await peer.negotiate({ skipGreeting: true })
  })
  fakes.push(fake)
  await rejectsWithCode(NbdClient.connect(`nbd+unix://alice@/?socket=${fake.socket}&tls-psk-file=${psk}`, trusted()), 'NBD_ERR_TLS', 5000, /refused NBD_OPT_STARTTLS/)
  await rejectsWithCode(NbdClient.connect(`nbd+unix:///?socket=${fake.socket}`, { tlsPskFile: psk, tlsUsername: 'alice' }), 'NBD_ERR_TLS', 5000, /refused NBD_OPT_STARTTLS/)
})

test("tls: 'on': a reconnect that comes back without TLS is a changed server, not a plaintext session", async () => {
  const fake = await downgradingServer()
  fakes.push(fake)
  const client = await NbdClient.connect(`nbd+unix://alice@/?socket=${fake.socket}&tls-psk-file=${psk}`, trusted({ tls: 'on', structuredReplies: false, reconnectDelay: 5000, backoff: { initialMs: 50, maxMs: 50 } }))
  assert.equal(client.info.tls, true)
  assert.deepEqual(await client.read(512, 0), Buffer.alloc(512, 1))
  const second = client.read(512, 0)
  second.catch(() => {})
  const err = await rejectsWithCode(second, 'NBD_ERR_SERVER_CHANGED', 10_000, /used TLS, this one does not/)
  assert.ok(err instanceof Error)
  assert.equal(client.state, 'QUIT')
  client.destroy()
})

test('X.509 over a Unix socket: the system CAs alone are not enough, a name or our own CA is needed', async () => {
  const fake = await FakeServer.start(async (peer) => { await peer.closed() })
  fakes.push(fake)
  // A directory with a client certificate but no ca-cert.pem: the system CAs would be used.
  const certs = path.join(dir, 'no-ca')
  makePki(path.join(dir, 'client-only'))
  mkdirSync(certs)
  for (const f of ['client-cert.pem', 'client-key.pem']) copyFileSync(path.join(dir, 'client-only', f), path.join(certs, f))
  await rejectsWithCode(NbdClient.connect(`nbds+unix:///?socket=${fake.socket}&tls-certificates=${certs}`, trusted()), 'NBD_ERR_TLS', 5000,
    /over a Unix socket, X\.509 needs ca-cert\.pem in tls-certificates or a tls-hostname/)
  await rejectsWithCode(NbdClient.connect(`nbds+unix:///?socket=${fake.socket}`, { tls: 'require' }), 'NBD_ERR_TLS', 5000, /needs ca-cert\.pem/)
  assert.equal(fake.peers.length, 0, 'refused before connecting')
  // With a name to check, the system CAs are fine (the handshake is then tried).
  const named = NbdClient.connect(`nbds+unix:///?socket=${fake.socket}&tls-certificates=${certs}&tls-hostname=nbd.example.com`, trusted({ handshakeTimeout: 500 }))
  await within(named.then(() => assert.fail('connected'), () => {}), 5000)
  assert.equal(fake.peers.length, 1)
})
