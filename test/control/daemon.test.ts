/**
 * `nbdts ctl` against a running mount, end to end: real SO_PEERCRED (a client run as nobody),
 * settings, disconnect and reconnect, reconfigure from a file, interactive use, shutdown.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { after, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import '../helpers/assert.ts'
import { CLI, nbdts, packageFor } from '../helpers/cli.ts'
import { isMounted, mountExport } from '../helpers/mounts.ts'
import { run, startNbdkit, tempDir } from '../helpers/servers.ts'

const dir = tempDir()
// The control socket's directory must be reachable for the unprivileged client.
chmodSync(dir, 0o755)
const stops: Array<() => Promise<void>> = []
after(async () => { for (const s of stops.reverse()) await s().catch(() => {}) })

async function setup (name: string, args: string[] = []): Promise<{ socket: string, file: string, pid: number, uri: string, stop: () => Promise<void> }> {
  const server = await startNbdkit(dir, ['memory', '16M'], `${name}-server`)
  stops.push(() => server.stop('SIGKILL'))
  const socket = path.join(dir, `${name}.ctl`)
  const m = await mountExport(dir, server.uri(), `${name}.img`, ['--control-socket', socket, ...args])
  stops.push(() => m.unmount())
  return { socket, file: m.file, pid: m.pid, uri: server.uri(), stop: () => server.stop('SIGKILL') }
}

const ctl = (socket: string, ...words: string[]): ReturnType<typeof nbdts> => nbdts(['ctl', '--socket', socket, ...words])

describe('nbdts ctl', () => {
  test('show, set, disconnect and reconnect on a live mount', async () => {
    const { socket, file } = await setup('live')
    const status = await ctl(socket, 'show', 'status')
    assert.equal(status.code, 0, status.stderr)
    assert.match(status.stdout, new RegExp(`file: ${file}`))
    assert.match(status.stdout, /state: up\n/)
    assert.match(status.stdout, /connections: CONNECTED/)
    const stats = JSON.parse((await ctl(socket, 'show', 'stats', 'json')).stdout) as { client: { requests: { blockStatus: number } }, fuse: { requests: Record<string, number> } }
    assert.ok(stats.fuse.requests.init === 1)
    assert.equal((await ctl(socket, 'set', 'reconnect-delay', '1s')).stdout.trim(), 'ok')
    assert.equal((await ctl(socket, 'set', 'max-in-flight', '7')).stdout.trim(), 'ok')
    const config = (await ctl(socket, 'show', 'config')).stdout
    assert.match(config, /reconnect-delay: 1000ms/)
    assert.match(config, /max-in-flight: 7/)
    const clients = (await ctl(socket, 'show', 'clients')).stdout
    assert.match(clients, /state: WORK\nprivileged: true\nuid: 0/)

    // disconnect: I/O waits for the reconnect delay (counted from the disconnect), then fails;
    // reconnect brings it back.
    const disconnected = Date.now()
    assert.equal((await ctl(socket, 'disconnect')).code, 0)
    assert.match((await ctl(socket, 'show', 'status')).stdout, /connections: CONNECTING_WAIT/)
    const failed = await run('dd', [`if=${file}`, 'of=/dev/null', 'bs=4096', 'count=1', 'iflag=direct']).then(() => 'ok', (e: Error) => e.message)
    assert.match(failed, /Input\/output error/)
    assert.ok(Date.now() - disconnected >= 950, `I/O waited for the reconnect delay (failed after ${Date.now() - disconnected} ms)`)
    assert.equal((await ctl(socket, 'reconnect')).code, 0)
    for (let i = 0; i < 100 && !/connections: CONNECTED/.test((await ctl(socket, 'show', 'status')).stdout); i++) await sleep(50)
    await run('dd', [`if=${file}`, 'of=/dev/null', 'bs=4096', 'count=1', 'iflag=direct'])
    const bad = await ctl(socket, 'set', 'max-in-flight', 'lots')
    assert.equal(bad.code, 1)
    assert.match(bad.stderr, /^nbdts: max-in-flight must be an integer/)
  })

  test('a client run as nobody may show but not change anything (SO_PEERCRED)', async () => {
    const { socket } = await setup('perm')
    const pkg = packageFor('nobody', dir)
    const asNobody = (args: string[]): Promise<{ code: number | null, stdout: string, stderr: string }> => new Promise((resolve) => {
      const child = spawn('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', process.execPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
      let stdout = ''
      let stderr = ''
      child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
      child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
      child.on('close', (code) => { resolve({ code, stdout, stderr }) })
    })
    const shown = await asNobody([path.join(pkg, 'dist/cli/main.js'), 'ctl', '--socket', socket, 'show', 'clients'])
    assert.equal(shown.code, 0, shown.stderr)
    assert.match(shown.stdout, /privileged: false\nuid: 65534/)
    // Every mutating command, in several spellings and orders, fuzzed too, from one process.
    const script = path.join(dir, 'as-nobody.mjs')
    const client = pathToFileURL(path.join(pkg, 'dist/control/client.js')).href
    writeFileSync(script, `
import { ControlConnection } from ${JSON.stringify(client)}
const words = ['help','show','reconnect','disconnect','reconfigure','shutdown','set','status','stats','config','json','max-in-flight','log-level','reconnect-delay','open-timeout','debug','1','2s','list','add','del','mount','mounts','lazy','force','persist']
const c = await ControlConnection.connect(${JSON.stringify(socket)})
const fixed = ['reconnect','disconnect','reconfigure','shutdown','set max-in-flight 1','set log-level debug','set reconnect-delay 1','set open-timeout 1']
const out = { fixed: [], fuzzRefused: 0, fuzzAccepted: [] }
for (const t of fixed) out.fixed.push((await c.request(t)).text)
for (let i = 0; i < 2000; i++) {
  const text = Array.from({ length: 1 + Math.floor(Math.random() * 4) }, () => words[Math.floor(Math.random() * words.length)]).join(' ')
  const r = await c.request(text)
  if (!r.ok && /permission denied/.test(r.text)) out.fuzzRefused++
  if (r.ok && !/^(show|help)/.test(text)) out.fuzzAccepted.push(text)
}
c.close()
console.log(JSON.stringify(out))
`)
    const fuzz = await asNobody([script])
    assert.equal(fuzz.code, 0, fuzz.stderr)
    const result = JSON.parse(fuzz.stdout) as { fixed: string[], fuzzRefused: number, fuzzAccepted: string[] }
    for (const text of result.fixed) assert.match(text, /permission denied/)
    assert.ok(result.fuzzRefused > 20, `fuzzing reached mutating commands (${result.fuzzRefused})`)
    assert.deepEqual(result.fuzzAccepted, [])
    const refused = await asNobody([path.join(pkg, 'dist/cli/main.js'), 'ctl', '--socket', socket, 'set', 'max-in-flight', '1'])
    assert.equal(refused.code, 1)
    assert.match(refused.stderr, /permission denied/)
    assert.match((await ctl(socket, 'show', 'config')).stdout, /max-in-flight: 64/, 'nothing changed')
    assert.equal((await ctl(socket, 'set', 'max-in-flight', '1')).code, 0, 'root may')
  })

  test('reconfigure re-reads --config without dropping the mount', async () => {
    const config = path.join(dir, 'nbdts.conf')
    writeFileSync(config, '[defaults]\nreconnect-delay = "3s"\n[daemon]\nlog-level = "info"\n')
    const { socket, file } = await setup('reconf', ['--config', config])
    assert.match((await ctl(socket, 'show', 'config')).stdout, /reconnect-delay: 3000ms/, 'read at start')
    writeFileSync(config, '# changed\n[defaults]\nreconnect-delay = "9s"\nmax-in-flight = 5\n[daemon]\nlog-level = "debug"\ncontrol-timeout = "2s"\n')
    const replies = await Promise.all(Array.from({ length: 10 }, () => ctl(socket, 'reconfigure')))
    assert.ok(replies.every((r) => r.stdout.trim() === 'ok'))
    for (let i = 0; i < 50 && !/max-in-flight: 5/.test((await ctl(socket, 'show', 'config')).stdout); i++) await sleep(50)
    const shown = (await ctl(socket, 'show', 'config', 'json')).stdout
    const values = JSON.parse(shown) as Record<string, string | number> & { mount: Array<Record<string, string | number>> }
    assert.equal(values.mount[0]!['reconnect-delay'], '9000ms')
    assert.equal(values['log-level'], 'debug')
    assert.equal(values['control-timeout'], '2000ms')
    // Ten separate processes arrive too far apart to be coalesced reliably; the unit test holds the lock.
    assert.ok(Number(values.reconfigures) >= 1 && Number(values.reconfigures) <= 10)
    writeFileSync(config, '[defaults]\nmax-in-flight = "many"\n')
    await ctl(socket, 'reconfigure')
    await sleep(200)
    assert.match((await ctl(socket, 'show', 'config')).stdout, /last-reconfigure: failed .*max-in-flight must be/)
    assert.equal(existsSync(file), true, 'still mounted')
  })

  test('interactive mode: history and completion aside, commands, errors and quit', async () => {
    const { socket } = await setup('interactive')
    const child = spawn(process.execPath, [CLI, 'ctl', '-k', '--socket', socket], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, HOME: dir } })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
    child.stdin.write('show config\nset log-level warn\nshow nothing\nquit\n')
    const code = await new Promise((resolve) => child.on('close', resolve))
    assert.equal(code, 0)
    assert.match(stdout, /max-in-flight: 64/)
    assert.match(stdout, /ok/)
    assert.match(stderr, /fail: unknown show topic "nothing"/)
    assert.equal(existsSync(path.join(dir, '.nbdts_history')), true, 'history kept')
  })

  test('shutdown unmounts and exits; timeouts and missing sockets are reported clearly', async () => {
    const { socket, file, pid } = await setup('down')
    assert.equal((await ctl(socket, 'shutdown')).stdout.trim(), 'ok')
    for (let i = 0; i < 200 && isMounted(file); i++) await sleep(20)
    assert.equal(isMounted(file), false)
    for (let i = 0; i < 200 && existsSync(socket); i++) await sleep(20)
    assert.equal(existsSync(socket), false, 'the socket file is gone')
    const alive = (): boolean => { try { process.kill(pid, 0); return true } catch { return false } }
    for (let i = 0; i < 250 && alive(); i++) await sleep(20)
    assert.equal(alive(), false, 'the daemon exited')

    const missing = await ctl(socket, 'show', 'status')
    assert.equal(missing.code, 1)
    assert.match(missing.stderr, /^nbdts: cannot connect to .* \(is the mount running\? see --socket\)\n$/)
    // A socket that accepts but never answers.
    const silentPath = path.join(dir, 'silent.ctl')
    mkdirSync(dir, { recursive: true })
    const silent = net.createServer(() => {}).listen(silentPath)
    const t = Date.now()
    const timedOut = await nbdts(['ctl', '--socket', silentPath, '--timeout', '300', 'show', 'stats'])
    silent.close()
    assert.equal(timedOut.code, 1)
    assert.match(timedOut.stderr, /no reply within 800 ms/)
    assert.ok(Date.now() - t >= 800)
  })
})
