/**
 * TLS against real servers (nbdkit and qemu-nbd with PSK and X.509, a required client
 * certificate), every way it must fail (wrong PSK, wrong CA, wrong name, missing client
 * certificate, a server that refuses STARTTLS, plaintext injected after the ACK), opportunistic
 * TLS, and a reconnect under load that does the handshake again.
 */
import assert from 'node:assert/strict'
import { readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { after, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { NbdClient, type NbdClientOptions } from '../../src/index.ts'
import { NBD_OPT, NBD_OPTS_MAGIC, NBD_REP } from '../../src/protocol/constants.ts'
import { rejectsWithCode, within } from '../helpers/assert.ts'
import { nbdts } from '../helpers/cli.ts'
import { FakeServer } from '../helpers/fake-server.ts'
import { mountExport } from '../helpers/mounts.ts'
import { run, startNbdkit, startQemuNbd, tcpPort, tempDir, type RunningServer } from '../helpers/servers.ts'
import { makePki, makePsk } from '../helpers/tls-keys.ts'

const dir = tempDir()
const psk = makePsk(path.join(dir, 'psk'), ['alice', 'bob'])
// The server knows alice only; bob's key is in our file but not in the server's.
const serverPsk = makePsk(path.join(dir, 'psk-server'), [])
writeFileSync(serverPsk, `alice:${readPsk(psk, 'alice')}\n`)
const wrongPsk = path.join(dir, 'wrong.psk')
writeFileSync(wrongPsk, `alice:${'ab'.repeat(32)}\n`, { mode: 0o600 })
const pki = makePki(path.join(dir, 'pki'))
const other = makePki(path.join(dir, 'other'), 'Other')

/** A user's hex key from a psktool file. */
function readPsk (file: string, user: string): string {
  const line = readFileSync(file, 'utf8').split('\n').find((l) => l.startsWith(`${user}:`))
  if (line === undefined) throw new Error(`${user} not in ${file}`)
  return line.slice(user.length + 1)
}

const servers: RunningServer[] = []
const fakes: FakeServer[] = []
after(async () => {
  await Promise.all(servers.map((s) => s.stop('SIGKILL')))
  await Promise.all(fakes.map((f) => f.close()))
})
async function nbdkit (args: string[], name: string, tcp?: number): Promise<RunningServer> {
  const s = await startNbdkit(dir, args, name, tcp === undefined ? {} : { tcp })
  servers.push(s)
  return s
}

/** The tests are the application, and their URIs name their own key files. */
const connect = (uri: string, options: NbdClientOptions = {}): Promise<NbdClient> => NbdClient.connect(uri, { allowLocalFile: true, ...options })

const pskUri = (s: RunningServer, file = psk, user = 'alice'): string =>
  `nbds+unix://${user}@/?socket=${s.socket}&tls-psk-file=${file}`
const x509Uri = (s: RunningServer, certs: string, extra = ''): string =>
  `nbds+unix:///?socket=${s.socket}&tls-certificates=${certs}${extra}`

async function roundTrip (client: NbdClient): Promise<void> {
  const data = Buffer.alloc(65536)
  for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff
  await client.write(data, 4096)
  assert.ok((await client.read(65536, 4096)).equals(data))
}

describe('nbdkit', () => {
  test('PSK, TLS required: structured replies and meta contexts are negotiated again over TLS', async () => {
    const s = await nbdkit(['--tls=require', `--tls-psk=${serverPsk}`, 'memory', '16M'], 'psk')
    const client = await connect(pskUri(s))
    assert.equal(client.info.tls, true)
    assert.equal(client.info.mode, 'structured')
    assert.deepEqual(client.metaContexts, ['base:allocation'])
    await roundTrip(client)
    const status = await client.blockStatus(1 << 20, 0)
    assert.ok((status.get('base:allocation') ?? []).length > 0, 'block status works over TLS')
    await client.close()
  })

  test('PSK: a wrong key, and a user the server does not know, are TLS errors within a bound', async () => {
    const s = await nbdkit(['--tls=require', `--tls-psk=${serverPsk}`, 'memory', '16M'], 'psk-bad')
    await rejectsWithCode(connect(pskUri(s, wrongPsk)), 'NBD_ERR_TLS', 10_000, /PSK/)
    await rejectsWithCode(connect(pskUri(s, psk, 'bob')), 'NBD_ERR_TLS', 10_000)
    // A user missing from our own file is caught before connecting.
    await rejectsWithCode(connect(pskUri(s, psk, 'carol')), 'NBD_ERR_TLS', 1000, /carol was not found/)
  })

  test('X.509 with a required client certificate, over TCP with the host name checked', async () => {
    const port = tcpPort()
    await nbdkit(['--tls=require', `--tls-certificates=${pki.dir}`, '--tls-verify-peer', 'memory', '16M'], 'x509', port)
    for (const host of ['localhost', '127.0.0.1']) {
      const client = await connect(`nbds://${host}:${port}/?tls-certificates=${pki.clientDir}`)
      assert.equal(client.info.tls, true)
      await roundTrip(client)
      await client.close()
    }
  })

  test('X.509 failures: wrong CA, wrong name, no client certificate; verification off only when asked', async () => {
    const port = tcpPort()
    await nbdkit(['--tls=require', `--tls-certificates=${pki.dir}`, '--tls-verify-peer', 'memory', '16M'], 'x509-bad', port)
    const uri = (certs: string, extra = ''): string => `nbds://localhost:${port}/?tls-certificates=${certs}${extra}`
    await rejectsWithCode(connect(uri(other.clientDir)), 'NBD_ERR_TLS', 10_000, /could not be verified/)
    await rejectsWithCode(connect(uri(pki.clientDir, '&tls-hostname=nbd.example.com')), 'NBD_ERR_TLS', 10_000, /not for nbd\.example\.com/)
    // TLS 1.3 reveals a refused client certificate only after the handshake.
    await rejectsWithCode(connect(uri(pki.caOnlyDir)), 'NBD_ERR_TLS', 10_000, /client certificate/)
    // Turning verification off is explicit: the wrong name is then accepted.
    const client = await connect(uri(pki.clientDir, '&tls-hostname=nbd.example.com&tls-verify-peer=0'))
    assert.equal(client.info.tls, true)
    await client.close()
  })

  test('a server without TLS: required fails (credentials alone require it), opportunistic only when asked', async () => {
    const s = await nbdkit(['--tls=off', 'memory', '16M'], 'plain')
    await rejectsWithCode(connect(pskUri(s)), 'NBD_ERR_TLS', 5000, /refused NBD_OPT_STARTTLS/)
    // Credentials on an nbd+unix:// URI mean TLS is required, as in QEMU: never a quiet plaintext session.
    await rejectsWithCode(connect(`nbd+unix:///?socket=${s.socket}&tls-psk-file=${psk}`, { tlsUsername: 'alice' }), 'NBD_ERR_TLS', 5000, /refused NBD_OPT_STARTTLS/)
    const client = await connect(`nbd+unix:///?socket=${s.socket}&tls-psk-file=${psk}`, { tlsUsername: 'alice', tls: 'on' })
    assert.equal(client.info.tls, false)
    await roundTrip(client)
    await client.close()
    const on = await nbdkit(['--tls=on', `--tls-psk=${serverPsk}`, 'memory', '16M'], 'optional')
    const secure = await connect(`nbd+unix://alice@/?socket=${on.socket}&tls-psk-file=${psk}`, { tls: 'on' })
    assert.equal(secure.info.tls, true, 'opportunistic TLS is used when offered')
    await secure.close()
  })

  test('TLS + reconnect under load: the handshake is done again, nothing acknowledged is lost', async () => {
    const image = path.join(dir, 'reconnect.img')
    writeFileSync(image, Buffer.alloc(0))
    await run('truncate', ['-s', '32M', image])
    const s = await nbdkit(['--tls=require', `--tls-psk=${serverPsk}`, 'file', image], 'tls-reconnect')
    const client = await connect(pskUri(s), { reconnectDelay: 20_000, maxInFlight: 32 })
    const written = new Map<number, number>()
    let stop = false
    const load = Promise.all(Array.from({ length: 32 }, async (_, w) => {
      for (let i = 0; !stop; i++) {
        const block = (w * 97 + i * 31) % 512
        const tag = w * 100_000 + i
        const buf = Buffer.alloc(65536)
        buf.writeUInt32BE(tag, 0)
        buf.writeUInt32BE(block, 65532)
        await client.write(buf, block * 65536)
        written.set(block, tag)
      }
    }))
    await sleep(300)
    await s.stop('SIGKILL')
    await sleep(800)
    await s.restart()
    await sleep(500)
    stop = true
    await within(load, 30_000, 'the load')
    await client.flush()
    for (const [block, tag] of written) {
      const buf = await client.read(65536, block * 65536)
      assert.equal(buf.readUInt32BE(0), tag, `block ${block}`)
    }
    assert.ok(client.stats().reconnects >= 1)
    assert.equal(client.info.tls, true)
    await client.close()
  })
})

describe('qemu-nbd', () => {
  test('PSK and X.509 (tls-creds objects)', async () => {
    const image = path.join(dir, 'qemu.img')
    await run('qemu-img', ['create', '-f', 'raw', image, '16M'])
    const q1 = await startQemuNbd(dir, ['--object', `tls-creds-psk,id=tls0,endpoint=server,dir=${path.dirname(serverPsk)}`, '--tls-creds', 'tls0', '-f', 'raw', image], 'qemu-psk')
    servers.push(q1)
    const a = await connect(pskUri(q1))
    assert.equal(a.info.tls, true)
    await roundTrip(a)
    await a.close()
    await q1.stop()
    const q2 = await startQemuNbd(dir, ['--object', `tls-creds-x509,id=tls0,endpoint=server,dir=${pki.dir},verify-peer=on`, '--tls-creds', 'tls0', '-f', 'raw', image], 'qemu-x509')
    servers.push(q2)
    const b = await connect(x509Uri(q2, pki.clientDir, '&tls-hostname=localhost'))
    assert.equal(b.info.tls, true)
    await roundTrip(b)
    await b.close()
  })
})

describe('a scripted server', () => {
  test('STARTTLS refused while TLS is required: nothing but the preamble and STARTTLS went out in clear', async () => {
    const fake = await FakeServer.start(async (peer) => {
      await peer.greet()
      const option = await peer.readOption()
      peer.replyOption(option.option, NBD_REP.ERR_POLICY)
      await peer.closed()
    })
    fakes.push(fake)
    await rejectsWithCode(connect(`nbds+unix:///?socket=${fake.socket}&tls-psk-file=${psk}`, { tlsUsername: 'alice' }), 'NBD_ERR_TLS', 5000, /refused NBD_OPT_STARTTLS/)
    const sent = Buffer.concat(fake.peers[0]!.received)
    const starttls = Buffer.alloc(16)
    starttls.writeBigUInt64BE(NBD_OPTS_MAGIC, 0)
    starttls.writeUInt32BE(NBD_OPT.STARTTLS, 8)
    assert.deepEqual(sent, Buffer.concat([sent.subarray(0, 4), starttls]), 'client flags, then STARTTLS, then nothing')
    assert.equal(sent.length, 20)
  })

  test('plaintext sent right after the STARTTLS ACK is refused, not fed into the session', async () => {
    const fake = await FakeServer.start(async (peer) => {
      await peer.greet()
      const option = await peer.readOption()
      // The ACK and an injected option reply in the same write.
      const ack = Buffer.alloc(20)
      ack.writeBigUInt64BE(0x3e889045565a9n, 0)
      ack.writeUInt32BE(option.option, 8)
      ack.writeUInt32BE(NBD_REP.ACK, 12)
      peer.write(ack, ack)
      await peer.closed()
    })
    fakes.push(fake)
    await rejectsWithCode(connect(`nbds+unix:///?socket=${fake.socket}&tls-psk-file=${psk}`, { tlsUsername: 'alice' }), 'NBD_ERR_TLS', 5000, /plaintext bytes after acknowledging STARTTLS/)
  })

  test('PSK over TLS 1.2 (the PSK suites are named) and over TLS 1.3', async () => {
    for (const version of ['TLSv1.2', 'TLSv1.3'] as const) {
      const key = Buffer.from(readPsk(psk, 'alice'), 'hex')
      let cipher = ''
      const fake = await FakeServer.start(async (peer) => {
        await peer.greet()
        const option = await peer.readOption()
        assert.equal(option.option, NBD_OPT.STARTTLS)
        peer.replyOption(option.option, NBD_REP.ACK)
        await peer.startTls({
          minVersion: version, maxVersion: version, ciphers: 'PSK-AES256-GCM-SHA384:TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256',
          pskCallback: (_socket, identity) => identity === 'alice' ? key : null
        })
        cipher = peer.tls!.getCipher().name
        await peer.negotiate({ skipGreeting: true })
        const r = await peer.readRequest()
        peer.simpleReply(r.cookie, 0, Buffer.alloc(Number(r.length), 0x42))
        await peer.closed()
      })
      fakes.push(fake)
      const client = await connect(`nbds+unix:///?socket=${fake.socket}&tls-psk-file=${psk}`, { tlsUsername: 'alice', structuredReplies: false })
      assert.ok((await client.read(512, 0)).equals(Buffer.alloc(512, 0x42)))
      assert.equal(client.info.tls, true)
      await client.close()
      assert.ok(cipher !== '', `${version}: ${cipher}`)
      if (version === 'TLSv1.2') assert.match(cipher, /PSK/)
    }
  })
})

describe('command line', () => {
  test('nbdts info over TLS, with the URI or with flags', async () => {
    const s = await nbdkit(['--tls=require', `--tls-psk=${serverPsk}`, 'memory', '16M'], 'cli')
    const a = await nbdts(['info', pskUri(s)])
    assert.equal(a.code, 0, a.stderr)
    assert.match(a.stdout, /newstyle-fixed with TLS/)
    const b = await nbdts(['info', '--tls', 'require', '--tls-psk-file', psk, '--tls-username', 'alice', `nbd+unix:///?socket=${s.socket}`])
    assert.equal(b.code, 0, b.stderr)
    assert.match(b.stdout, /with TLS/)
    const c = await nbdts(['info', '--tls-psk-file', wrongPsk, '--tls-username', 'alice', `nbds+unix:///?socket=${s.socket}`])
    assert.equal(c.code, 1)
    assert.match(c.stderr, /PSK/)
  })

  test('nbdts mount over TLS: the detached daemon gets the TLS flags too', async () => {
    const s = await nbdkit(['--tls=require', `--tls-psk=${serverPsk}`, 'memory', '16M'], 'cli-mount')
    const control = path.join(dir, 'tls-mount.ctl')
    const m = await mountExport(dir, `nbd+unix:///?socket=${s.socket}`, 'tls.img', ['--tls', 'require', '--tls-psk-file', psk, '--tls-username', 'alice', '--control-socket', control])
    try {
      await run('dd', ['if=/dev/urandom', `of=${m.file}`, 'bs=64k', 'count=16', 'oflag=direct', 'conv=notrunc'])
      const back = await run('dd', [`if=${m.file}`, 'of=/dev/null', 'bs=64k', 'count=16', 'iflag=direct'])
      assert.match(back.stderr, /1048576 bytes/)
      assert.match(m.logText(), /connected to .*structured replies/)
      const status = await nbdts(['ctl', '--socket', control, 'show', 'status'])
      assert.match(status.stdout, /protocol: newstyle-fixed, structured replies, with TLS/)
    } finally {
      await m.unmount()
    }
  })
})
