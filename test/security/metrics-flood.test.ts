/**
 * nobody against root's `--metrics-listen` port: 400 connections, each sending half a request
 * and holding on, to a daemon with 256 descriptors. Root's control socket still answers, the
 * port keeps at most 16 of them, and those few are closed once their headers are late.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import http from 'node:http'
import path from 'node:path'
import { after, test } from 'node:test'
import { controlRequest } from '../../src/control/client.ts'
import { within } from '../helpers/assert.ts'
import { startDaemon, type TestDaemon } from '../helpers/daemon.ts'
import { tcpPort } from '../helpers/servers.ts'
import { scene } from './scene.ts'

const { root } = scene()
const cleanups: Array<() => Promise<void>> = []
after(async () => { for (const c of cleanups.reverse()) await c() })

test('400 held metrics connections from nobody: root\'s control socket answers; 16 are kept, and not for long', async () => {
  // The port range is shared with other test runs on this machine: another port if it is taken.
  let port = 0
  let found: TestDaemon | undefined
  for (let attempt = 0; attempt < 5 && found === undefined; attempt++) {
    port = tcpPort()
    const started = await startDaemon(root, `metrics-${attempt}`, { args: ['--metrics-listen', `127.0.0.1:${port}`], wrap: ['prlimit', '--nofile=256:256', '--'] })
    cleanups.push(() => started.stop())
    if (started.ready.startsWith('ready')) found = started
  }
  assert.ok(found !== undefined, 'the daemon started on one of 5 ports')
  const d: TestDaemon = found
  const script = `
    const net = require('node:net')
    const sockets = []
    let settled = 0
    const report = (word) => console.log(word + ' ' + sockets.filter((s) => !s.destroyed && s.readyState === 'open').length)
    for (let i = 0; i < 400; i++) {
      const s = net.connect(${port}, '127.0.0.1')
      sockets.push(s)
      const done = () => { if (++settled === 400) setTimeout(() => report('ready'), 1000) }
      s.on('connect', () => { s.write('GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n'); done() })
      s.on('error', () => {})
      s.resume()
      s.once('error', done)
    }
    setTimeout(() => { report('later'); process.exit(0) }, 9000)
  `
  const flooder = spawn('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] })
  const exited = new Promise<void>((resolve) => flooder.once('exit', () => { resolve() }))
  cleanups.push(async () => { flooder.kill('SIGKILL'); await exited })
  let out = ''
  flooder.stdout.setEncoding('utf8').on('data', (t: string) => { out += t })
  flooder.stderr.setEncoding('utf8').on('data', (t: string) => { out += t })
  await within(new Promise<void>((resolve, reject) => {
    flooder.stdout.on('data', () => { if (/ready \d+/.test(out)) resolve() })
    flooder.once('exit', () => { reject(new Error(`the flooder exited: ${out}`)) })
  }), 30_000, 'the flood')
  for (let i = 0; i < 3; i++) {
    const show = await controlRequest(d.socket, 'show status').catch((err: unknown) => {
      throw new Error(`root's show status failed (${(err as Error).message}); the daemon ${d.child.exitCode === null ? 'runs' : `exited ${d.child.exitCode}`}; its log:\n${d.logText().slice(-2000)}`)
    })
    assert.equal(show.ok, true, show.text)
  }
  const held = Number(/ready (\d+)/.exec(out)![1])
  assert.ok(held <= 16, `nobody holds ${held} metrics connections`)
  // A scrape by root still gets through once the slots free up; the late headers free them.
  await within(exited, 20_000, 'the flooder\'s second report')
  assert.equal(Number(/later (\d+)/.exec(out)?.[1]), 0, `still open after 9 s: ${out}`)
  const scrape = await fetch(`http://127.0.0.1:${port}/metrics`)
  assert.equal(scrape.status, 200)
  assert.match(await scrape.text(), /nbdts_/)
})

test('metrics on a Unix socket: nobody holds at most 4 connections, and root still scrapes', async () => {
  const socket = path.join(root, 'metrics.sock')
  const d = await startDaemon(root, 'metrics-unix', { args: ['--metrics-listen', socket] })
  cleanups.push(() => d.stop())
  const script = `
    const net = require('node:net')
    const sockets = []
    let settled = 0
    for (let i = 0; i < 40; i++) {
      const s = net.connect(${JSON.stringify(socket)})
      sockets.push(s)
      const done = () => { if (++settled === 40) setTimeout(() => { console.log('ready ' + sockets.filter((s) => !s.destroyed && s.readyState === 'open').length) }, 1000) }
      s.on('connect', () => { s.write('GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n'); done() })
      s.on('error', () => {})
      s.once('error', done)
      s.resume()
    }
    process.stdin.resume()
  `
  const flooder = spawn('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', process.execPath, '-e', script], { stdio: ['pipe', 'pipe', 'pipe'] })
  const exited = new Promise<void>((resolve) => flooder.once('exit', () => { resolve() }))
  cleanups.push(async () => { flooder.kill('SIGKILL'); await exited })
  let out = ''
  flooder.stdout.setEncoding('utf8').on('data', (t: string) => { out += t })
  flooder.stderr.setEncoding('utf8').on('data', (t: string) => { out += t })
  await within(new Promise<void>((resolve, reject) => {
    flooder.stdout.on('data', () => { if (/ready \d+/.test(out)) resolve() })
    flooder.once('exit', () => { reject(new Error(`the flooder exited: ${out}`)) })
  }), 30_000, 'the flood')
  assert.ok(Number(/ready (\d+)/.exec(out)![1]) <= 4, `nobody holds ${out}`)
  const body = await within(new Promise<string>((resolve, reject) => {
    http.get({ socketPath: socket, path: '/metrics' }, (res) => {
      let text = ''
      res.setEncoding('utf8').on('data', (t: string) => { text += t }).on('end', () => { resolve(text) }).on('error', reject)
    }).on('error', reject)
  }), 10_000, 'root\'s scrape')
  assert.match(body, /nbdts_/)
  assert.match((await d.ctl('show', 'daemon')).text, new RegExp(`metrics-listen: ${socket}`))
  flooder.kill('SIGKILL')
  await exited
  await d.stop()
  assert.equal(existsSync(socket), false, 'the metrics socket goes with the daemon')
})
