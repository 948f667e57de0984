/**
 * `npm run demo`: the main job on an embedded default. A local nbdkit memory export is mounted
 * with `nbdts mount` as a file; the file becomes a loop device with ext4 on it; a file is
 * written, the file system is mounted again from scratch and the file read back (so the bytes
 * really went through NBD); then the mount's stats, and everything is torn down.
 *
 *   npm run demo               # all of it, then tear down
 *   npm run demo -- --keep     # leave it running and print how to stop it
 */
import { spawn, spawnSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'

const keep = process.argv.includes('--keep')
const cli = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url))
const dir = mkdtempSync(path.join(tmpdir(), 'nbdts-demo-'))
const socket = path.join(dir, 'nbdkit.sock')
const uri = `nbd+unix:///?socket=${socket}`
const image = path.join(dir, 'disk.img')
const control = path.join(dir, 'control.sock')
const mnt = path.join(dir, 'mnt')
const log = path.join(dir, 'nbdts.log')

const step = (text: string): void => { process.stdout.write(`\n── ${text}\n`) }
const say = (text: string): void => { process.stdout.write(`${text}\n`) }

/** Runs a command, echoing it; throws with its stderr when it fails. */
function sh (command: string, args: string[], quiet = false): string {
  say(`$ ${[command, ...args].join(' ')}`)
  const r = spawnSync(command, args, { encoding: 'utf8', timeout: 120_000 })
  if (r.error !== undefined) throw r.error
  if (r.status !== 0) throw new Error(`${command} failed (${r.status ?? r.signal}): ${r.stderr.trim()}`)
  if (!quiet && r.stdout.trim() !== '') say(r.stdout.trimEnd())
  return r.stdout
}

const undo: Array<{ what: string, run: () => void }> = []
let nbdkitPid = 0
let loop = ''

async function main (): Promise<void> {
  step('a 512 MiB nbdkit memory export on a Unix socket')
  const pidfile = path.join(dir, 'nbdkit.pid')
  // Without --keep nbdkit dies with us; with it, it must outlive the demo.
  const server = spawn('nbdkit', [...(keep ? [] : ['--exit-with-parent']), '-U', socket, '-P', pidfile, 'memory', '512M'],
    { stdio: 'inherit', detached: keep })
  server.unref()
  for (let i = 0; i < 250 && !existsSync(pidfile); i++) await sleep(20)
  if (!existsSync(pidfile)) throw new Error('nbdkit did not start')
  nbdkitPid = Number(readFileSync(pidfile, 'utf8').trim())
  undo.push({ what: `kill ${nbdkitPid}`, run: () => { try { process.kill(nbdkitPid) } catch {} } })
  say(`nbdkit pid ${nbdkitPid}, ${uri}`)

  step('nbdts mount: the export as a local file')
  writeFileSync(image, '')
  sh(process.execPath, [cli, 'mount', uri, image, '--control-socket', control, '--log-file', log])
  undo.push({ what: `node ${cli} umount ${image}`, run: () => { spawnSync(process.execPath, [cli, 'umount', image], { stdio: 'inherit' }) } })
  sh('ls', ['-l', image])

  step('a loop device over it, ext4 on that')
  loop = sh('losetup', ['-f', '--show', '--direct-io=on', image]).trim()
  undo.push({ what: `losetup -d ${loop}`, run: () => { spawnSync('losetup', ['-d', loop]) } })
  sh('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', loop])
  mkdirSync(mnt)
  sh('mount', [loop, mnt])
  undo.push({ what: `umount ${mnt}`, run: () => { spawnSync('umount', [mnt]) } })

  step('writing files')
  const payload = randomBytes(48 << 20)
  const digest = createHash('sha256').update(payload).digest('hex')
  writeFileSync(path.join(mnt, 'random.bin'), payload)
  writeFileSync(path.join(mnt, 'hello.txt'), 'hello from nbdts, through FUSE, a loop device and ext4\n')
  sh('sync', ['-f', mnt])
  sh('df', ['-h', mnt])

  step('unmount ext4, check it, mount it again, read back')
  sh('umount', [mnt])
  sh('e2fsck', ['-fn', loop])
  // The page cache of the loop device is bypassed (direct I/O), so these reads go to the server.
  sh('mount', [loop, mnt])
  const back = createHash('sha256').update(readFileSync(path.join(mnt, 'random.bin'))).digest('hex')
  say(`random.bin: 48 MiB, sha256 ${back.slice(0, 16)}… ${back === digest ? 'matches what was written' : `MISMATCH (wrote ${digest.slice(0, 16)}…)`}`)
  say(`hello.txt: ${readFileSync(path.join(mnt, 'hello.txt'), 'utf8').trim()}`)
  if (back !== digest) process.exitCode = 1

  step('what the mount saw (nbdts ctl)')
  sh(process.execPath, [cli, 'ctl', '--socket', control, 'show', 'status'])
  sh(process.execPath, [cli, 'ctl', '--socket', control, 'show', 'stats'])
}

function teardown (): void {
  if (keep && process.exitCode !== 1) {
    step('kept running; to stop it:')
    for (const u of [...undo].reverse()) say(`  ${u.what}`)
    say(`  rm -rf ${dir}`)
    return
  }
  step('tearing down')
  for (const u of undo.reverse()) {
    say(`$ ${u.what}`)
    u.run()
  }
  rmSync(dir, { recursive: true, force: true })
}

try {
  await main()
} catch (err) {
  process.stderr.write(`demo failed: ${(err as Error).message}\n`)
  if (existsSync(log)) process.stderr.write(`the mount's log:\n${readFileSync(log, 'utf8')}`)
  process.exitCode = 1
} finally {
  teardown()
}
