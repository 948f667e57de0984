import assert from 'node:assert/strict'
import { test } from 'node:test'
import { formatNbdUri, parseNbdUri } from '../../src/protocol/uri.ts'
import '../helpers/assert.ts'

test('NBD URIs per doc/uri.md', () => {
  const cases: Array<[string, unknown]> = [
    ['nbd://example.com/disk', { address: { transport: 'tcp', host: 'example.com', port: 10809 }, exportName: 'disk', tls: 'on' }],
    ['nbd://example.com', { address: { transport: 'tcp', host: 'example.com', port: 10809 }, exportName: '', tls: 'on' }],
    ['nbd://example.com/', { address: { transport: 'tcp', host: 'example.com', port: 10809 }, exportName: '', tls: 'on' }],
    ['nbd://example.com//disk', { address: { transport: 'tcp', host: 'example.com', port: 10809 }, exportName: '/disk', tls: 'on' }],
    ['nbd://[::1]:10900/hello%20world', { address: { transport: 'tcp', host: '::1', port: 10900 }, exportName: 'hello world', tls: 'on' }],
    ['nbd+unix:///exp?socket=/tmp/a+b.sock', { address: { transport: 'unix', path: '/tmp/a+b.sock' }, exportName: 'exp', tls: 'on' }],
    // nbdkit's $uri has no third slash
    ['nbd+unix://?socket=/tmp/s', { address: { transport: 'unix', path: '/tmp/s' }, exportName: '', tls: 'on' }],
    ['nbd+unix:///?socket=%00abstract', { address: { transport: 'unix', path: '\0abstract' }, exportName: '', tls: 'on' }],
    ['nbds://alice@h/e?tls-psk-file=/k.psk', { address: { transport: 'tcp', host: 'h', port: 10809 }, exportName: 'e', tls: 'require', tlsPskFile: '/k.psk', tlsUsername: 'alice' }],
    ['nbds+unix:///?socket=/s&tls-verify-peer=0&tls-hostname=srv', { address: { transport: 'unix', path: '/s' }, exportName: '', tls: 'require', tlsHostname: 'srv', tlsVerifyPeer: false }],
    // A PSK user over a Unix socket (libnbd's form: userinfo, no host).
    ['nbds+unix://alice@/disk?socket=/s&tls-psk-file=/k', { address: { transport: 'unix', path: '/s' }, exportName: 'disk', tls: 'require', tlsPskFile: '/k', tlsUsername: 'alice' }],
    ['nbds+unix://al%20ice@?socket=/s', { address: { transport: 'unix', path: '/s' }, exportName: '', tls: 'require', tlsUsername: 'al ice' }]
  ]
  for (const [uri, expected] of cases) assert.deepEqual(parseNbdUri(uri), expected, uri)
})

test('bad URIs are diagnosed, never ignored', () => {
  const bad: Array<[string, RegExp]> = [
    ['nbd://h/e?tls-verfy-peer=0', /unknown query parameter "tls-verfy-peer"/],
    ['nbd://h/e?x-experimental=1', /unknown query parameter/],
    ['http://h/e', /unsupported scheme/],
    ['nbd+unix:///e', /needs \?socket=/],
    ['nbd+unix://host/e?socket=/s', /takes no host/],
    ['nbd://h/e?socket=/s', /only applies/],
    ['nbd:///e', /names no host/],
    ['nbd://h/%zz', /malformed percent-escape/],
    ['nbd://h/e?socket=a&socket=b', /unknown|only applies|twice/],
    ['nbds://h/e?tls-type=magic', /tls-type must be/],
    ['nbds://h/e?tls-verify-peer=maybe', /tls-verify-peer must be/],
    ['nbd://u:pw@h/e', /passwords/],
    ['nbds+unix://u:pw@/?socket=/s', /passwords/],
    ['not a uri', /is not a URI/]
  ]
  for (const [uri, message] of bad) {
    assert.throws(() => parseNbdUri(uri), (err: Error & { code?: string }) => err.code === 'NBD_ERR_URI' && message.test(err.message), uri)
  }
})

test('formatNbdUri round-trips', () => {
  for (const uri of ['nbd://h:10900/a%20b', 'nbd+unix:///x?socket=/tmp/s.sock', 'nbd://[::1]/e']) {
    const p = parseNbdUri(uri)
    assert.deepEqual(parseNbdUri(formatNbdUri(p.address, p.exportName, false)), p)
  }
})
