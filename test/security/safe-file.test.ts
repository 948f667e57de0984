/**
 * The safe-file rules by themselves: what a pidfile and a config file must be before a
 * privileged process trusts them, against links and files that another user (nobody) made.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { chmodSync, chownSync, linkSync, readFileSync, renameSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { after, test } from 'node:test'
import { readConfigFile } from '../../src/daemon/config-file.ts'
import { Pidfile } from '../../src/util/safe-file.ts'
import { within } from '../helpers/assert.ts'
import { assertUntouched, NOBODY, NOGROUP, scene } from './scene.ts'

const { root, theirs, victim: freshVictim } = scene()

const children: Array<() => void> = []
after(() => { for (const stop of children) stop() })

test('pidfile: a link, a second name or another owner is refused; nothing is written through it', () => {
  const victim = freshVictim()
  const link = path.join(theirs, 'd.pid')
  symlinkSync(victim, link)
  assert.throws(() => Pidfile.acquire(link), /symbolic link/)
  const hard = path.join(root, 'hard.pid')
  linkSync(victim, hard)
  assert.throws(() => Pidfile.acquire(hard), /2 hard links/)
  assertUntouched(victim)
  const owned = path.join(theirs, 'owned.pid')
  writeFileSync(owned, '')
  chownSync(owned, NOBODY, NOGROUP)
  assert.throws(() => Pidfile.acquire(owned), /belongs to uid 65534/)
})

test('pidfile: locked while its daemon lives, taken over once it is dead, removed only while ours', async () => {
  const file = path.join(root, 'daemon.pid')
  const script = path.join(root, 'holder.mts')
  const safeFile = pathToFileURL(fileURLToPath(new URL('../../src/util/safe-file.ts', import.meta.url))).href
  writeFileSync(script, `import { Pidfile } from ${JSON.stringify(safeFile)}\nconst p = Pidfile.acquire(process.argv[2])\np.write()\nconsole.log('ready')\nprocess.stdin.resume()\n`)
  const child = spawn(process.execPath, ['--import', 'tsx', script, file], { cwd: fileURLToPath(new URL('../..', import.meta.url)), stdio: ['pipe', 'pipe', 'inherit'] })
  children.push(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  await within(new Promise<void>((resolve) => child.stdout.on('data', (d: Buffer) => { if (d.toString().includes('ready')) resolve() })), 20_000, 'the holder')
  assert.throws(() => Pidfile.acquire(file), new RegExp(`locked: nbdts is already running as pid ${child.pid}`))
  child.kill('SIGKILL')
  await new Promise((resolve) => child.once('exit', resolve))
  assert.equal(readFileSync(file, 'utf8'), `${child.pid}\n`, 'a stale pidfile from a dead daemon')
  const mine = Pidfile.acquire(file)
  mine.write()
  assert.equal(readFileSync(file, 'utf8'), `${process.pid}\n`)
  assert.equal(statSync(file).mode & 0o777, 0o640)
  // Someone replaced it meanwhile: release leaves their file alone.
  renameSync(file, `${file}.old`)
  writeFileSync(file, 'theirs\n')
  mine.release()
  assert.equal(readFileSync(file, 'utf8'), 'theirs\n')
})

test('config file: a link, another user\'s file or one others may write is refused', () => {
  const link = path.join(theirs, 'nbdts.conf')
  symlinkSync(freshVictim(), link)
  assert.throws(() => readConfigFile(link), /symbolic link/)
  const owned = path.join(theirs, 'owned.conf')
  writeFileSync(owned, 'max-in-flight = 1\n')
  chownSync(owned, NOBODY, NOGROUP)
  assert.throws(() => readConfigFile(owned), /owned by uid 65534; a config file must belong to root/)
  const open = path.join(root, 'open.conf')
  writeFileSync(open, 'max-in-flight = 1\n')
  chmodSync(open, 0o664)
  assert.throws(() => readConfigFile(open), /writable by its group \(mode 0664\)/)
  chmodSync(open, 0o644)
  assert.equal(readConfigFile(open), 'max-in-flight = 1\n')
})

