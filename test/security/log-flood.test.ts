/**
 * nobody floods root's control socket with bad connections (a frame header longer than any
 * command, then hang-up) for 3 s, as fast as it can. Root's log gets a few lines and a count
 * per interval, not a line per connection.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import path from 'node:path'
import { after, test } from 'node:test'
import { ConfigLock } from '../../src/control/config-lock.ts'
import { controlRequest } from '../../src/control/client.ts'
import { ControlServer } from '../../src/control/control-server.ts'
import { within } from '../helpers/assert.ts'
import { scene } from './scene.ts'

const { root } = scene()
const closers: Array<() => Promise<void>> = []
after(async () => { for (const c of closers.reverse()) await c() })

test('3 s of bad control connections from nobody: a handful of log lines and a count, and root is still answered', async () => {
  const socket = path.join(root, 'flood-log.ctl')
  const lines: string[] = []
  const server = await ControlServer.listen({
    path: socket,
    lock: new ConfigLock(),
    run: () => 'state: CONNECTED',
    log: (level, message) => { lines.push(`${level}: ${message}`) }
  })
  closers.push(() => server.close())
  const script = `
    const net = require('node:net')
    const bad = Buffer.alloc(8)
    bad.writeBigUInt64LE(1n << 40n)
    const end = Date.now() + 3000
    let made = 0
    function one () {
      if (Date.now() > end) return Promise.resolve()
      return new Promise((resolve) => {
        const s = net.connect(${JSON.stringify(socket)})
        s.on('connect', () => { made++; s.write(bad) })
        s.on('error', () => {})
        s.on('close', resolve)
        s.resume()
      }).then(one)
    }
    Promise.all(Array.from({ length: 8 }, one)).then(() => { console.log('made ' + made) })
  `
  const flooder = spawn('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  flooder.stdout.setEncoding('utf8').on('data', (t: string) => { out += t })
  flooder.stderr.setEncoding('utf8').on('data', (t: string) => { out += t })
  await within(new Promise<void>((resolve) => flooder.once('exit', () => { resolve() })), 20_000, 'the flood')
  const made = Number(/made (\d+)/.exec(out)?.[1])
  assert.ok(made >= 200, `nobody made ${made} bad connections: ${out}`)
  const show = await controlRequest(socket, 'show status')
  assert.equal(show.ok, true, show.text)
  await server.close()
  const dropped = lines.filter((l) => l.includes('dropped'))
  assert.ok(dropped.length <= 10, `${made} bad connections wrote ${dropped.length} lines to root's log`)
  assert.ok(lines.some((l) => /control clients of uid \d+: \d+ more lines like the above/.test(l)), `the rest are counted:\n${lines.slice(-5).join('\n')}`)
})
