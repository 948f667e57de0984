/**
 * The daemon's pieces on their own: the TOML config (sections, defaults, errors that name a
 * line and quote nothing), the reconfigure plan, the atomic append of `persist`, the latency
 * window, sd_notify against a fake NOTIFY_SOCKET.
 */
import assert from 'node:assert/strict'
import { chmodSync, readFileSync, readdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { test } from 'node:test'
import { appendToConfigFile } from '../../src/daemon/config-file.ts'
import { BUILT_IN, mountSectionText, parseConfig, resolve } from '../../src/daemon/config.ts'
import { LatencyWindow } from '../../src/daemon/io-stats.ts'
import { SystemdNotifier } from '../../src/daemon/notify.ts'
import { planReconfigure, type RunningMount } from '../../src/daemon/reconfigure.ts'
import { redactUri } from '../../src/daemon/views.ts'
import { within } from '../helpers/assert.ts'
import { notifySocket } from '../helpers/notify-socket.ts'
import { tempDir } from '../helpers/servers.ts'

const dir = tempDir()

const CONFIG = `# nbdts
[daemon]
log-level = "debug"
control-timeout = "2s"

[defaults]
reconnect-delay = 45          # seconds
connections = "auto"

[[mount]]
uri = "nbd+unix:///a?socket=/run/a.sock"
file = "/srv/a.img"
options = ["allow_other", "mode=0644"]

[[mount]]
uri = "nbds://h/b"
file = "/srv/b"
max-in-flight = 8
readonly = true
`

test('the config: [daemon], [defaults], one [[mount]] per file; built-in < defaults < the mount', () => {
  const c = parseConfig(CONFIG, 'f.toml')
  assert.deepEqual(c.daemon, { logLevel: 'debug', controlTimeout: 2000 })
  assert.deepEqual(c.defaults, { reconnectDelay: 45_000, connections: 'auto' })
  assert.deepEqual([...c.mounts.keys()], ['/srv/a.img', '/srv/b'])
  assert.equal(c.mounts.get('/srv/a.img')!.where, 'f.toml:10')
  assert.deepEqual(resolve(c.defaults, c.mounts.get('/srv/b')!.settings), { ...BUILT_IN, reconnectDelay: 45_000, maxInFlight: 8, readonly: true })
  const back = parseConfig(CONFIG + mountSectionText('nbd://h/c', '/srv/c', { reconnectDelay: 1500, options: ['ro'] }, 'added'), 'f.toml')
  assert.deepEqual(back.mounts.get('/srv/c')!.settings, { reconnectDelay: 1500, options: ['ro'] }, 'a persisted section reads back')
})

test('config errors name file:line in our own words and never quote the file', () => {
  const cases: Array<[string, RegExp]> = [
    ['x = "root-only:s3cr3t"\n', /^f:\s*unknown section or key "x" at the top level/],
    ['[daemon]\nlog-level = "s3cr3t"\n', /^f:2: log-level must be one of error, warn, info, debug$/],
    ['[defaults]\ncolour = "s3cr3t"\n', /^f:2: unknown \[defaults\] setting/],
    ['\n\nroot-only:s3cr3t\n', /^f:3: not valid TOML \(/],
    ['[[mount]]\nuri = "s3cr3t"\nfile = "/a"\n', /^f:2: uri is not a valid NBD URI$/],
    ['[[mount]]\nuri = "nbd://h/"\nfile = "a/s3cr3t"\n', /^f:3: file must be an absolute, normalised path$/],
    ['[[mount]]\nuri = "nbd://h/"\n', /^f:1: this \[\[mount\]\] has no file$/],
    ['[[mount]]\nuri = "nbd://h/"\nfile = "/a"\n[[mount]]\nuri = "nbd://h/"\nfile = "/a"\n', /^f:4: a second \[\[mount\]\] for the file of f:1$/],
    ['[[mount]]\nuri = "nbd://h/"\nfile = "/a"\nmax-in-flight = 0\n', /^f:4: max-in-flight must be an integer from 1 to 4096$/]
  ]
  for (const [text, message] of cases) {
    assert.throws(() => parseConfig(text, 'f'), (e: Error) => message.test(e.message) && !e.message.includes('s3cr3t'), text)
  }
})

test('the reconfigure plan: add, remove, replace, live, untouched; mounts not from the config are left, adopted when named', () => {
  const uri = 'nbd://h/'
  const running = (file: string, origin: RunningMount['origin'], own = {}, state: RunningMount['state'] = 'up'): RunningMount =>
    ({ file, uri, origin, own, settings: resolve({}, own), state })
  const now = [running('/keep', 'config'), running('/drop', 'config'), running('/live', 'config'), running('/remount', 'config'),
    running('/failed', 'config', {}, 'failed'), running('/ctl', 'ctl'), running('/adopt', 'ctl'), running('/cli', 'command line', { maxInFlight: 3 })]
  const next = parseConfig(['/keep', '/live', '/remount', '/failed', '/new', '/adopt'].map((f) =>
    `[[mount]]\nuri = "${uri}"\nfile = "${f}"\n${f === '/live' ? 'reconnect-delay = "9s"\n' : f === '/remount' ? 'readonly = true\n' : ''}`).join('') +
    '[defaults]\nopen-timeout = "5s"\n', 'f')
  const plan = planReconfigure(now, next)
  assert.deepEqual(plan.add.map((m) => m.section.file), ['/failed', '/new'])
  assert.deepEqual(plan.remove, ['/drop'])
  assert.deepEqual(plan.replace.map((m) => m.section.file), ['/remount'])
  assert.deepEqual(plan.live.map((m) => [m.file, m.adopt, m.changed]), [
    ['/keep', false, ['open-timeout']], ['/live', false, ['reconnect-delay', 'open-timeout']], ['/adopt', true, ['open-timeout']],
    ['/ctl', false, ['open-timeout']], ['/cli', false, ['open-timeout']]])
  assert.equal(plan.live.find((m) => m.file === '/cli')!.settings.maxInFlight, 3, 'a flag stays')
  const again = planReconfigure([running('/keep', 'config', {}), running('/ctl', 'ctl')], parseConfig(`[[mount]]\nuri = "${uri}"\nfile = "/keep"\n`, 'f'))
  assert.deepEqual(again.untouched, ['/keep', '/ctl'], 'nothing changed: nothing touched')
})

test('persist appends atomically: mode kept, a link or a file others may write refused, nothing left behind', () => {
  const file = path.join(dir, 'nbdts.toml')
  writeFileSync(file, CONFIG)
  chmodSync(file, 0o640)
  const inode = statSync(file).ino
  appendToConfigFile(file, mountSectionText('nbd://h/c', '/srv/c', {}, 'added'))
  assert.equal(statSync(file).mode & 0o777, 0o640)
  assert.notEqual(statSync(file).ino, inode, 'a new file renamed into place')
  assert.equal(parseConfig(readFileSync(file, 'utf8'), file).mounts.size, 3)
  const link = path.join(dir, 'link.toml')
  symlinkSync(file, link)
  assert.throws(() => { appendToConfigFile(link, '#\n') }, /symbolic link/)
  chmodSync(file, 0o664)
  assert.throws(() => { appendToConfigFile(file, '#\n') }, /writable by its group/)
  assert.deepEqual(readdirSync(dir).filter((f) => f.startsWith('.nbdts.toml')), [], 'no temp file left')
})

test('latency percentiles over the window; URIs lose user and query for others', () => {
  const w = new LatencyWindow()
  assert.equal(w.percentile(0.99), undefined)
  for (let i = 0; i < 99; i++) w.record(0.1)
  w.record(50)
  const p99 = w.percentile(0.99)!
  assert.ok(p99 >= 0.1 && p99 < 0.13, `p99 ${p99}`)
  const max = w.percentile(1)!
  assert.ok(max >= 50 && max < 60, `max ${max}`)
  for (let i = 0; i < 10; i++) w.tick()
  assert.equal(w.percentile(0.5), undefined, 'forgotten after the window')
  assert.equal(redactUri('nbds://alice@h:10809/x?tls-psk-file=/k.psk'), 'nbds://h:10809/x?…')
  assert.equal(redactUri('nbd+unix:///x?socket=/s'), 'nbd+unix:///x?…')
  assert.equal(redactUri('nbd://h/x'), 'nbd://h/x')
})

test('sd_notify: datagrams to NOTIFY_SOCKET; READY, RELOADING with MONOTONIC_USEC, READY before STOPPING after a reload; nothing without it', async () => {
  const socket = notifySocket(path.join(dir, 'notify.sock'))
  try {
    const logged: string[] = []
    const n = new SystemdNotifier((_l, m) => { logged.push(m) }, { NOTIFY_SOCKET: socket.path })
    assert.equal(n.enabled, true)
    n.ready('2 mounts: 2 up')
    n.reloading('reloading')
    n.stopping('bye')
    n.close()
    await within(socket.next((m) => m.startsWith('STOPPING=1')), 2000, 'STOPPING')
    assert.equal(socket.messages[0], 'READY=1\nSTATUS=2 mounts: 2 up\n')
    assert.match(socket.messages[1]!, /^RELOADING=1\nMONOTONIC_USEC=\d+\nSTATUS=reloading\n$/)
    assert.equal(socket.messages[2], 'READY=1\n', 'a reload in progress is ended first (multipathd 0d4db707)')
    assert.equal(socket.messages[3], 'STOPPING=1\nSTATUS=bye\n')
    assert.equal(logged.length, 0)
    const none = new SystemdNotifier(() => {}, {})
    assert.equal(none.enabled, false)
    none.ready('x')
    none.close()
    const gone = new SystemdNotifier((_l, m) => { logged.push(m) }, { NOTIFY_SOCKET: path.join(dir, 'nobody-listens.sock') })
    gone.ready('x')
    gone.ready('y')
    gone.close()
    assert.equal(logged.length, 1, 'a failed send is logged once')
  } finally {
    socket.close()
  }
})
