/**
 * Root's mounts against another local user (nobody): a target that is a symlink, a path through
 * a symlink, a directory the user controls (owned, world-writable, or sticky with the user's
 * file), a swap between check and mount; and a forged `nbdts:PID` mount source handed to
 * `nbdts umount`. The mounts run in this process (FuseMount from dist/, whose device reader is
 * a worker that needs no TypeScript loader).
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { chmodSync, chownSync, closeSync, mkdirSync, openSync, readFileSync, renameSync, symlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { after, before, describe, test } from 'node:test'
import { within } from '../helpers/assert.ts'
import { nbdts } from '../helpers/cli.ts'
import { asNobody, detachOnExit, isMounted } from '../helpers/mounts.ts'
import { startNbdkit, tempDir } from '../helpers/servers.ts'
import { NbdClient } from '../../dist/index.js'
import { FuseMount } from '../../dist/fuse/fuse-mount.js'

const NOBODY = 65534
const base = tempDir('nbdts-attacker-')
chmodSync(base, 0o755)
const victim = path.join(base, 'victim')
const SECRET = 'root:x:0:0:root:/root:/bin/bash\n'
const stops: Array<() => Promise<void>> = []
let client: NbdClient

before(async () => {
  writeFileSync(victim, SECRET, { mode: 0o644 })
  const s = await startNbdkit(base, ['memory', '1M'], 'served')
  stops.push(() => s.stop('SIGKILL'))
  client = await NbdClient.connect(s.uri(), { connections: 1 })
  stops.push(() => client.close())
})
after(async () => { for (const s of stops.reverse()) await s().catch(() => {}) })

/** A directory under base, with this owner and mode. */
function directory (name: string, uid: number, mode: number): string {
  const d = path.join(base, name)
  mkdirSync(d)
  chownSync(d, uid, uid)
  chmodSync(d, mode)
  return d
}

async function refused (target: string, why: RegExp, beforeMount?: () => void): Promise<void> {
  await assert.rejects(FuseMount.mount({ client, path: target, ...(beforeMount !== undefined && { beforeMount }) }), (err: Error & { code?: string, reason?: string }) => {
    assert.equal(err.code, 'NBD_ERR_MOUNT')
    assert.equal(err.reason, 'unsafe-target')
    assert.match(err.message, why)
    return true
  })
  assert.equal(readFileSync('/proc/self/mountinfo', 'utf8').includes(` - fuse.nbdts nbdts:${process.pid} `), false, 'nothing of ours is mounted anywhere')
  assert.equal(isMounted(victim), false)
  assert.equal(readFileSync(victim, 'utf8'), SECRET)
}

describe('root mounting where another user could choose what gets covered', () => {
  test('a target that is a symbolic link, or below one, is refused', async () => {
    const d = directory('links', 0, 0o755)
    symlinkSync(victim, path.join(d, 'disk.img'))
    await refused(path.join(d, 'disk.img'), /disk\.img: it is a symbolic link/)
    mkdirSync(path.join(d, 'real'))
    writeFileSync(path.join(d, 'real', 'disk.img'), '')
    symlinkSync(path.join(d, 'real'), path.join(d, 'alias'))
    await refused(path.join(d, 'alias', 'disk.img'), /it resolves to .*\/real\/disk\.img \(a directory on its path is a symbolic link\)/)
  })

  test('in a directory nobody owns: refused, before and after nobody swaps the file for a link to a root file', async () => {
    const d = directory('nobodys', NOBODY, 0o755)
    const target = path.join(d, 'disk.img')
    assert.equal((await asNobody('touch', [target])).code, 0)
    await refused(target, new RegExp(`${d} is owned by uid ${NOBODY}, who could replace ${target}`))
    assert.equal((await asNobody('ln', ['-sf', victim, target])).code, 0)
    await refused(target, /it is a symbolic link/)
  })

  test('in a world-writable directory: refused; in a sticky one, only a file of root\'s', async () => {
    const open = directory('open', 0, 0o777)
    writeFileSync(path.join(open, 'disk.img'), '')
    await refused(path.join(open, 'disk.img'), /open is writable by others \(mode 777\)/)
    const sticky = directory('sticky', 0, 0o1777)
    const theirs = path.join(sticky, 'theirs.img')
    assert.equal((await asNobody('touch', [theirs])).code, 0)
    await refused(theirs, new RegExp(`${theirs} is owned by uid ${NOBODY} in the sticky directory`))
    const ours = path.join(sticky, 'ours.img')
    writeFileSync(ours, '')
    const m = await FuseMount.mount({ client, path: ours })
    try {
      assert.equal(isMounted(ours), true)
    } finally {
      await m.unmount()
    }
    assert.equal(isMounted(ours), false)
  })

  test('a directory mount\'s --name must be a file name', async () => {
    const d = directory('names', 0, 0o755)
    for (const name of ['../victim', 'a/b', '..', '']) {
      await assert.rejects(FuseMount.mount({ client, path: d, name }), { code: 'NBD_ERR_INVALID_ARGUMENT', message: /is not a file name/ })
    }
    assert.equal(isMounted(d), false)
  })

  test('swapped for a link to a root file between the check and the mount: the link is not followed, the mount is undone', async () => {
    const d = directory('race', 0, 0o755)
    const target = path.join(d, 'disk.img')
    writeFileSync(target, '')
    // What an attacker would do if the directory check let them: the check has passed and the
    // target is pinned; now the name points somewhere else.
    await refused(target, /it was moved or replaced while being mounted \(the mount was undone\)/, () => {
      renameSync(target, path.join(d, 'moved.img'))
      symlinkSync(victim, target)
    })
  })
})

describe('nbdts umount and a forged mount source', () => {
  test('a mount by nobody whose source names a root process: that process is neither signalled nor waited for', async () => {
    const d = directory('forger', NOBODY, 0o755)
    const target = path.join(d, 'forged.img')
    assert.equal((await asNobody('touch', [target])).code, 0)
    const bystander = spawn('sleep', ['600'], { stdio: 'ignore' })
    stops.push(async () => { bystander.kill('SIGKILL') })
    // What `fusermount3 -o fsname=nbdts:PID,subtype=nbdts,allow_other` gives nobody (with
    // user_allow_other): made directly here, since /dev/fuse is root's on this machine.
    // Nobody serves it, so anything that asks the mount a question hangs.
    const fuse = openSync('/dev/fuse', 'r+')
    stops.push(async () => { closeSync(fuse) })
    await new Promise<void>((resolve, reject) => {
      const child = spawn('mount', ['-i', '-c', '-t', 'fuse', '-o', `fd=3,rootmode=100000,user_id=${NOBODY},group_id=${NOBODY},allow_other,subtype=nbdts`,
        `nbdts:${bystander.pid!}`, target], { stdio: ['ignore', 'ignore', 'inherit', fuse] })
      child.on('close', (code) => { if (code === 0) resolve(); else reject(new Error(`mount exited ${code}`)) })
    })
    detachOnExit(target)
    assert.equal(isMounted(target), true)
    const u = await within(nbdts(['umount', target]), 20_000, 'nbdts umount')
    assert.equal(u.code, 0, u.stderr)
    assert.match(u.stdout, new RegExp(`unmounted \\(its daemon was not waited for: process ${bystander.pid!} runs as uid 0, not as the mount's owner \\(uid ${NOBODY}\\)\\)`))
    assert.equal(isMounted(target), false)
    assert.equal(bystander.exitCode, null, 'the named process was not signalled')
    assert.equal(bystander.signalCode, null)
  })
})
