/**
 * nobody names a process with terminal escapes (its comm: ESC ] 0 ; ... BEL, which retitles a
 * terminal, and ESC [ 2 J, which clears it) and holds root's allow_other mount open with it.
 * Root's `nbdts ctl del mount` and `nbdts umount` name the holder, escaped: nothing nobody
 * chose reaches root's terminal raw.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { after, test } from 'node:test'
import { within } from '../helpers/assert.ts'
import { nbdts } from '../helpers/cli.ts'
import { startDaemon } from '../helpers/daemon.ts'
import { startNbdkit } from '../helpers/servers.ts'
import { scene } from './scene.ts'

const { root } = scene()
const cleanups: Array<() => Promise<void>> = []
after(async () => { for (const c of cleanups.reverse()) await c() })

const RAW = /[\u0000-\u0008\u000b-\u001f\u007f]/

test('a holder named with ESC and BEL: root\'s ctl del mount and umount print it escaped', async () => {
  const server = await startNbdkit(root, ['memory', '8M'], 'holder')
  cleanups.push(() => server.stop('SIGKILL'))
  const file = path.join(root, 'shared.img')
  writeFileSync(file, '')
  const d = await startDaemon(root, 'holder')
  cleanups.push(() => d.stop())
  assert.equal((await d.ctl('add', 'mount', server.uri(), file, 'options', 'allow_other,mode=0644', 'connections', '1')).text, 'ok')
  await d.waitFor(file, 'up')

  const script = `
    const fs = require('node:fs')
    const fd = fs.openSync(${JSON.stringify(file)}, 'r')
    fs.writeFileSync('/proc/self/comm', '\\x1b]0;pwn\\x07\\x1b[2J')
    console.log('ready ' + fd)
    process.stdin.resume()
  `
  const holder = spawn('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', process.execPath, '-e', script], { stdio: ['pipe', 'pipe', 'pipe'] })
  const exited = new Promise<void>((resolve) => holder.once('exit', () => { resolve() }))
  cleanups.push(async () => { holder.kill('SIGKILL'); await exited })
  let said = ''
  holder.stderr.setEncoding('utf8').on('data', (t: string) => { said += t })
  await within(new Promise<void>((resolve, reject) => {
    holder.stdout.setEncoding('utf8').on('data', (t: string) => { said += t; if (said.includes('ready')) resolve() })
    holder.once('exit', (code) => { reject(new Error(`the holder exited (${code}): ${said}`)) })
  }), 20_000, 'the holder')

  const del = await nbdts(['ctl', '--socket', d.socket, 'del', 'mount', file])
  assert.equal(del.code, 1, del.stdout)
  assert.match(del.stderr, /busy \(in use by pid \d+ \(\\x1b\]0;pwn\\x07/, del.stderr)
  assert.doesNotMatch(del.stderr, RAW, 'ctl del mount printed a control character raw')

  const umount = await nbdts(['umount', file])
  assert.equal(umount.code, 1, umount.stdout)
  assert.match(umount.stderr, /busy \(in use by pid \d+ \(\\x1b\]0;pwn\\x07/, umount.stderr)
  assert.doesNotMatch(umount.stderr, RAW, 'umount printed a control character raw')
  holder.kill('SIGKILL')
  await exited
  assert.equal((await d.ctl('del', 'mount', file)).text, 'ok')
  await d.waitFor(file, 'gone')
})
