/**
 * Keys and certificates for the TLS tests, made fresh per test file with gnutls' tools
 * (testing.md §7): a PSK file, and two PKIs in the directory layout nbdkit, qemu-nbd and
 * libnbd share (ca-cert.pem, server-*.pem, client-*.pem). The second PKI's CA is the "wrong
 * CA" for our client.
 */
import { execFileSync } from 'node:child_process'
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs'
import path from 'node:path'

export interface TestPki {
  /** ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem */
  readonly dir: string
  /** ca-cert.pem, client-cert.pem, client-key.pem: what our client needs */
  readonly clientDir: string
  /** ca-cert.pem only: no client certificate */
  readonly caOnlyDir: string
}

const run = (cmd: string, args: string[], cwd: string): string => execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })

/** psktool's format: `user:64 hex digits`. */
export function makePsk (dir: string, users: readonly string[] = ['alice']): string {
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  const file = path.join(dir, 'keys.psk')
  for (const user of users) run('psktool', ['-u', user, '-p', file], dir)
  return file
}

export function makePki (dir: string, name = 'NBD Test'): TestPki {
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  const key = (file: string): void => { writeFileSync(path.join(dir, file), run('certtool', ['--generate-privkey', '--key-type=ecdsa'], dir), { mode: 0o600 }) }
  key('ca-key.pem')
  writeFileSync(path.join(dir, 'ca.info'), `cn = ${name} CA\nca\ncert_signing_key\nexpiration_days = 30\n`)
  run('certtool', ['--generate-self-signed', '--load-privkey', 'ca-key.pem', '--template', 'ca.info', '--outfile', 'ca-cert.pem'], dir)
  key('server-key.pem')
  writeFileSync(path.join(dir, 'server.info'), `organization = ${name}\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 30\n`)
  run('certtool', ['--generate-certificate', '--load-ca-certificate', 'ca-cert.pem', '--load-ca-privkey', 'ca-key.pem',
    '--load-privkey', 'server-key.pem', '--template', 'server.info', '--outfile', 'server-cert.pem'], dir)
  key('client-key.pem')
  writeFileSync(path.join(dir, 'client.info'), `organization = ${name}\ncn = nbd-test-client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 30\n`)
  run('certtool', ['--generate-certificate', '--load-ca-certificate', 'ca-cert.pem', '--load-ca-privkey', 'ca-key.pem',
    '--load-privkey', 'client-key.pem', '--template', 'client.info', '--outfile', 'client-cert.pem'], dir)
  const clientDir = `${dir}-client`
  const caOnlyDir = `${dir}-ca-only`
  for (const d of [clientDir, caOnlyDir]) mkdirSync(d, { recursive: true, mode: 0o700 })
  for (const f of ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']) copyFileSync(path.join(dir, f), path.join(clientDir, f))
  copyFileSync(path.join(dir, 'ca-cert.pem'), path.join(caOnlyDir, 'ca-cert.pem'))
  return { dir, clientDir, caOnlyDir }
}
