import assert from 'node:assert/strict'
import { test } from 'node:test'
import { complete, isReadOnly, needsLock, parseCommand, tokenize } from '../../src/control/grammar.ts'
import { FrameDecoder, MAX_COMMAND, decodeText, encodeFrame } from '../../src/control/frame.ts'
import { parseConfigFile } from '../../src/control/settings.ts'
import '../helpers/assert.ts'

test('the whole grammar, by position', () => {
  const ok: Array<[string, unknown]> = [
    ['help', { kind: 'help' }],
    ['show status', { kind: 'show', topic: 'status', json: false }],
    ['show stats json', { kind: 'show', topic: 'stats', json: true }],
    ['  show   config  ', { kind: 'show', topic: 'config', json: false }],
    ['show connections', { kind: 'show', topic: 'connections', json: false }],
    ['show clients json', { kind: 'show', topic: 'clients', json: true }],
    ['show requests', { kind: 'show', topic: 'requests', json: false }],
    ['reconnect', { kind: 'reconnect' }],
    ['disconnect', { kind: 'disconnect' }],
    ['reconfigure', { kind: 'reconfigure' }],
    ['shutdown', { kind: 'shutdown' }],
    ['set reconnect-delay 30', { kind: 'set', key: 'reconnect-delay', ms: 30_000 }],
    ['set reconnect-delay 500ms', { kind: 'set', key: 'reconnect-delay', ms: 500 }],
    ['set open-timeout 2m', { kind: 'set', key: 'open-timeout', ms: 120_000 }],
    ['set max-in-flight 128', { kind: 'set', key: 'max-in-flight', count: 128 }],
    ['set log-level debug', { kind: 'set', key: 'log-level', level: 'debug' }],
    ['set "log-level" "warn"', { kind: 'set', key: 'log-level', level: 'warn' }]
  ]
  for (const [text, expected] of ok) assert.deepEqual(parseCommand(text), expected, text)

  const bad: Array<[string, RegExp]> = [
    ['', /missing command/],
    ['sho status', /unknown command "sho"/],
    ['status show', /unknown command "status"/],
    ['show', /missing show topic/],
    ['show json', /unknown show topic "json"/],
    ['show stats xml', /unexpected "xml"/],
    ['show stats json json', /unexpected "json" after show stats/],
    ['help me', /unexpected "me" after help/],
    ['shutdown now', /unexpected "now"/],
    ['set', /missing setting/],
    ['set max-in-flight', /needs a value/],
    ['set max-in-flight 0', /from 1 to 4096/],
    ['set max-in-flight 4097', /from 1 to 4096/],
    ['set max-in-flight 1.5', /from 1 to 4096/],
    ['set reconnect-delay soon', /not a duration/],
    ['set log-level loud', /unknown log level "loud"/],
    ['set log-level info extra', /unexpected "extra"/],
    ['set colour red', /unknown setting "colour"/],
    ['show "stats', /unbalanced/]
  ]
  for (const [text, message] of bad) {
    assert.throws(() => parseCommand(text), (e: Error & { code?: string }) => e.code === 'CTL_BAD_COMMAND' && message.test(e.message), text)
  }
})

test('read-only and locking are decided on the parse result', () => {
  assert.equal(isReadOnly(parseCommand('help')), true)
  assert.equal(isReadOnly(parseCommand('show stats')), true)
  for (const text of ['reconnect', 'disconnect', 'reconfigure', 'shutdown', 'set max-in-flight 2']) {
    assert.equal(isReadOnly(parseCommand(text)), false, text)
  }
  assert.equal(needsLock(parseCommand('set log-level info')), true)
  assert.equal(needsLock(parseCommand('reconnect')), true)
  assert.equal(needsLock(parseCommand('reconfigure')), false, 'reconfigure only schedules')
  assert.equal(needsLock(parseCommand('show config')), false)
})

test('completion follows the grammar', () => {
  assert.deepEqual(complete(''), ['help', 'show', 'reconnect', 'disconnect', 'reconfigure', 'shutdown', 'set'])
  assert.deepEqual(complete('re'), ['reconnect', 'reconfigure'])
  assert.deepEqual(complete('show c'), ['config', 'connections', 'clients'])
  assert.deepEqual(complete('show stats '), ['json'])
  assert.deepEqual(complete('set '), ['reconnect-delay', 'open-timeout', 'max-in-flight', 'log-level'])
  assert.deepEqual(complete('set log-level d'), ['debug'])
  assert.deepEqual(complete('shutdown '), [])
  assert.deepEqual(tokenize('a "b c" d'), ['a', 'b c', 'd'])
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

test('config file: key = value, comments, clear errors with line numbers', () => {
  assert.deepEqual(parseConfigFile('# x\nreconnect-delay = 10s\nmax-in-flight=8\n\nlog-level = debug # loud\ncontrol-timeout = 250ms\n', 'f'),
    { reconnectDelay: 10_000, maxInFlight: 8, logLevel: 'debug', controlTimeout: 250 })
  assert.throws(() => parseConfigFile('colour = red', 'f'), /f:1: unknown setting \(known: /)
  assert.throws(() => parseConfigFile('\nmax-in-flight = lots', 'f'), /f:2: max-in-flight must be/)
  assert.throws(() => parseConfigFile('just words', 'f'), /f:1: expected "key = value"/)
})
