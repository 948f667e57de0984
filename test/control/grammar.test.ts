import assert from 'node:assert/strict'
import { test } from 'node:test'
import { complete, isReadOnly, joinWords, needsLock, parseCommand, tokenize } from '../../src/control/grammar.ts'
import { FrameDecoder, MAX_COMMAND, decodeText, encodeFrame } from '../../src/control/frame.ts'
import '../helpers/assert.ts'

test('the whole grammar, by position', () => {
  const ok: Array<[string, unknown]> = [
    ['help', { kind: 'help' }],
    ['show daemon', { kind: 'show', topic: 'daemon', json: false }],
    ['show mounts json', { kind: 'show', topic: 'mounts', json: true }],
    ['  show   config  ', { kind: 'show', topic: 'config', json: false }],
    ['show clients json', { kind: 'show', topic: 'clients', json: true }],
    ['show metrics', { kind: 'show', topic: 'metrics', json: false }],
    ['show stats json', { kind: 'show-mount', file: undefined, topic: 'stats', json: true }],
    ['show mount /srv/a.img', { kind: 'show-mount', file: '/srv/a.img', topic: 'status', json: false }],
    ['show mount /srv/a.img json', { kind: 'show-mount', file: '/srv/a.img', topic: 'status', json: true }],
    ['show mount "/srv/my disk" connections json', { kind: 'show-mount', file: '/srv/my disk', topic: 'connections', json: true }],
    ['add mount nbd://h/x /srv/a.img', { kind: 'add', uri: 'nbd://h/x', file: '/srv/a.img', settings: {}, persist: false }],
    ['add mount nbd://h/x /srv/a.img readonly yes reconnect-delay 60s options allow_other,mode=0644 connections auto persist',
      { kind: 'add', uri: 'nbd://h/x', file: '/srv/a.img', settings: { readonly: true, reconnectDelay: 60_000, options: ['allow_other', 'mode=0644'], connections: 'auto' }, persist: true }],
    ['del mount /srv/a.img', { kind: 'del', file: '/srv/a.img', mode: 'refuse' }],
    ['del mount /srv/a.img lazy', { kind: 'del', file: '/srv/a.img', mode: 'lazy' }],
    ['set mount /srv/a.img reconnect-delay 500ms', { kind: 'set', file: '/srv/a.img', settings: { reconnectDelay: 500 } }],
    ['set max-in-flight 128', { kind: 'set', file: undefined, settings: { maxInFlight: 128 } }],
    ['set open-timeout 2m', { kind: 'set', file: undefined, settings: { openTimeout: 120_000 } }],
    ['set log-level debug', { kind: 'set-daemon', settings: { logLevel: 'debug' } }],
    ['set "log-level" "warn"', { kind: 'set-daemon', settings: { logLevel: 'warn' } }],
    ['set control-timeout 2', { kind: 'set-daemon', settings: { controlTimeout: 2000 } }],
    ['reconnect', { kind: 'reconnect', file: undefined }],
    ['disconnect mount /srv/a.img', { kind: 'disconnect', file: '/srv/a.img' }],
    ['reconfigure', { kind: 'reconfigure' }],
    ['shutdown', { kind: 'shutdown', mode: 'refuse' }],
    ['shutdown force', { kind: 'shutdown', mode: 'force' }]
  ]
  for (const [text, expected] of ok) assert.deepEqual(parseCommand(text), expected, text)

  const bad: Array<[string, RegExp]> = [
    ['', /missing command/],
    ['sho mounts', /unknown command "sho"/],
    ['mounts show', /unknown command "mounts"/],
    ['show', /missing show topic/],
    ['show json', /unknown show topic "json"/],
    ['show mounts xml', /unexpected "xml"/],
    ['show mounts json json', /unexpected "json" after show mounts/],
    ['show mount', /show mount needs a value/],
    ['show mount a.img', /absolute path/],
    ['show mount /a nothing', /unknown mount topic "nothing"/],
    ['show metrics json', /unexpected "json"/],
    ['help me', /unexpected "me" after help/],
    ['shutdown now', /unknown mode of shutdown "now"/],
    ['add', /missing object of add/],
    ['add map x /a', /unknown object of add "map"/],
    ['add mount nbd://h/x', /needs a value/],
    ['add mount nbd://h/x /a colour red', /unknown mount setting "colour"/],
    ['add mount nbd://h/x /a readonly', /readonly needs a value/],
    ['add mount nbd://h/x /a readonly maybe', /readonly must be yes or no \(not "maybe"\)/],
    ['add mount nbd://h/x /a max-in-flight 1 max-in-flight 2', /given twice/],
    ['add mount nbd://h/x /a persist readonly yes', /unknown mount setting "persist"/],
    ['del mount /a later', /unknown mode/],
    ['set', /missing setting/],
    ['set max-in-flight', /needs a value/],
    ['set max-in-flight 0', /from 1 to 4096/],
    ['set max-in-flight 4097', /from 1 to 4096/],
    ['set max-in-flight 1.5', /from 1 to 4096/],
    ['set reconnect-delay soon', /not a duration/],
    ['set log-level loud', /log-level must be one of/],
    ['set log-level info extra', /unexpected "extra"/],
    ['set colour red', /unknown setting "colour"/],
    ['set mount /a readonly yes', /unknown setting of a running mount "readonly"/],
    ['reconnect mount', /needs a value/],
    ['show "stats', /unbalanced/]
  ]
  for (const [text, message] of bad) {
    assert.throws(() => parseCommand(text), (e: Error & { code?: string }) => e.code === 'CTL_BAD_COMMAND' && message.test(e.message), text)
  }
})

test('read-only and locking are decided on the parse result', () => {
  for (const text of ['help', 'show mounts', 'show mount /a stats', 'show metrics', 'show stats']) assert.equal(isReadOnly(parseCommand(text)), true, text)
  for (const text of ['reconnect', 'disconnect', 'reconfigure', 'shutdown', 'set max-in-flight 2', 'add mount nbd://h/ /a', 'del mount /a', 'set log-level info']) {
    assert.equal(isReadOnly(parseCommand(text)), false, text)
  }
  assert.equal(needsLock(parseCommand('set log-level info')), true)
  assert.equal(needsLock(parseCommand('add mount nbd://h/ /a')), true)
  assert.equal(needsLock(parseCommand('del mount /a')), true)
  assert.equal(needsLock(parseCommand('reconnect')), true)
  assert.equal(needsLock(parseCommand('reconfigure')), false, 'reconfigure only schedules')
  assert.equal(needsLock(parseCommand('shutdown')), false, 'shutdown only schedules')
  assert.equal(needsLock(parseCommand('show config')), false)
})

test('completion follows the grammar, and offers the daemon\'s mounts where a FILE goes', () => {
  assert.deepEqual(complete(''), ['help', 'show', 'add', 'del', 'set', 'disconnect', 'reconnect', 'fail', 'reinstate', 'switch', 'reconfigure', 'shutdown'])
  assert.deepEqual(complete('re'), ['reconnect', 'reinstate', 'reconfigure'])
  assert.deepEqual(complete('show c'), ['config', 'clients', 'connections'])
  assert.deepEqual(complete('show mounts '), ['json'])
  assert.deepEqual(complete('show mount ', ['/a.img', '/b.img']), ['/a.img', '/b.img'])
  assert.deepEqual(complete('show mount /a.img s'), ['status', 'stats'])
  assert.deepEqual(complete('del mount /a.img '), ['lazy', 'force'])
  assert.deepEqual(complete('add mount nbd://h/ /a readonly '), ['yes', 'no'])
  assert.deepEqual(complete('add mount nbd://h/ /a readonly yes p'), ['paths', 'path-selector', 'polling-interval', 'path-identity', 'persist'])
  assert.deepEqual(complete('set mount /a '), ['reconnect-delay', 'open-timeout', 'max-in-flight', 'failback', 'no-path-retry'])
  assert.deepEqual(complete('fail '), ['path'])
  assert.deepEqual(complete('fail path 1 '), ['mount'])
  assert.deepEqual(complete('switch path 2 mount ', ['/a.img']), ['/a.img'])
  assert.deepEqual(complete('add mount nbd://h/ /a paths nbd://g/ pa'), ['paths', 'path-selector', 'path-identity'])
  assert.deepEqual(complete('show mount /a.img p'), ['paths'])
  assert.deepEqual(complete('set log-level d'), ['debug'])
  assert.deepEqual(complete('shutdown '), ['lazy', 'force'])
  assert.deepEqual(tokenize('a "b c" d'), ['a', 'b c', 'd'])
  assert.equal(joinWords(['show', 'mount', '/my disk']), 'show mount "/my disk"')
})

test('frames: little-endian u64 length, then UTF-8; lengths checked first', () => {
  assert.equal(encodeFrame('ok').toString('hex'), '0200000000000000' + '6f6b')
  const d = new FrameDecoder(MAX_COMMAND)
  const frame = encodeFrame('show stats')
  d.push(frame.subarray(0, 5))
  assert.equal(d.next(), undefined)
  d.push(frame.subarray(5))
  assert.equal(decodeText(d.next()!), 'show stats')
  const zero = new FrameDecoder(MAX_COMMAND)
  zero.push(Buffer.alloc(8))
  assert.throws(() => zero.next(), /outside 1\.\.4096/)
  const huge = new FrameDecoder(MAX_COMMAND)
  huge.push(Buffer.from('ffffffffffffffff', 'hex'))
  assert.throws(() => huge.next(), /outside/)
  assert.throws(() => decodeText(Buffer.from([0xc3, 0x28])), /UTF-8/)
})

