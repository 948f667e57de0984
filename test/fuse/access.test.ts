/**
 * Who may open the export: by default only the user who mounted it (as nbdfuse); -o
 * allow_other, mode=, uid= and gid= widen it. And mounting as a user other than root, through
 * fusermount3, as nobody: mount, read, write, unmount.
 */
import assert from 'node:assert/strict'
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { after, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import '../helpers/assert.ts'
import { nbdts, packageFor } from '../helpers/cli.ts'
import { asNobody, detachOnExit, isMounted, mountExport, openDevFuse } from '../helpers/mounts.ts'
import { run, startNbdkit, tempDir, type RunningServer } from '../helpers/servers.ts'

// A directory nobody may pass through (tempDir() makes 0700 ones), so that what refuses nobody
// below is the mount itself. Root-owned and not writable by others: a safe place to mount.
const dir = tempDir('nbdts-access-')
chmodSync(dir, 0o755)
const stops: Array<() => Promise<void>> = []
after(async () => { for (const s of stops.reverse()) await s().catch(() => {}) })
const NOBODY = 65534

let shared: RunningServer | undefined
async function server (): Promise<RunningServer> {
  if (shared !== undefined) return shared
  const s = await startNbdkit(dir, ['memory', '1M'], 'access')
  stops.push(() => s.stop('SIGKILL'))
  chmodSync(s.socket, 0o666)
  shared = s
  return s
}

const readAsNobody = async (file: string): Promise<string> => {
  const r = await asNobody('dd', [`if=${file}`, 'of=/dev/null', 'bs=4096', 'count=1', 'status=none'])
  return r.code === 0 ? 'ok' : r.stderr.trim()
}
const writeAsNobody = async (file: string): Promise<string> => {
  const r = await asNobody('dd', ['if=/dev/zero', `of=${file}`, 'bs=4096', 'count=1', 'conv=notrunc', 'status=none'])
  return r.code === 0 ? 'ok' : r.stderr.trim()
}

describe('access to the mounted export', () => {
  test('only the mounting user by default; allow_other, mode= and uid= widen it', async () => {
    const s = await server()
    const check = async (options: string[], expected: { mode: number, uid: number, read: RegExp, write: RegExp }): Promise<void> => {
      const m = await mountExport(dir, s.uri(), 'access.img', options)
      try {
        const st = statSync(m.file)
        assert.equal(st.mode & 0o777, expected.mode, `mode with ${options.join(' ')}`)
        assert.equal(st.uid, expected.uid)
        assert.match(await readAsNobody(m.file), expected.read, `nobody reading with ${options.join(' ') || 'no options'}`)
        assert.match(await writeAsNobody(m.file), expected.write, `nobody writing with ${options.join(' ') || 'no options'}`)
        assert.equal(readFileSync(m.file).length, 1024 * 1024, 'root (the owner here) reads')
      } finally {
        await m.unmount()
      }
    }
    const denied = /Permission denied/
    await check([], { mode: 0o600, uid: 0, read: denied, write: denied })
    await check(['-o', 'allow_other'], { mode: 0o600, uid: 0, read: denied, write: denied })
    await check(['-o', 'allow_other,mode=0644'], { mode: 0o644, uid: 0, read: /^ok$/, write: denied })
    await check(['-o', 'allow_other', '-o', `uid=${NOBODY},gid=${NOBODY}`], { mode: 0o600, uid: NOBODY, read: /^ok$/, write: /^ok$/ })
  })

  test('-o is checked before anything starts: unknown, reserved and malformed options are refused', async () => {
    const s = await server()
    const file = path.join(dir, 'options.img')
    writeFileSync(file, '')
    for (const [option, message] of [
      ['bogus', /unknown mount option "bogus"/],
      ['allow_other,fsname=x', /mount option "fsname=x": nbdts sets fsname itself/],
      ['mode=999', /mode=999" needs permission bits in octal/],
      ['suid', /"suid" is refused/],
      ['busy_poll=501', /"busy_poll=501" needs microseconds, 0 to 500/],
      ['reader=uring', /"reader=uring" needs drain .* or thread/],
      ['blksize=1000', /"blksize=1000" needs a power of two from 512 to 1048576/],
      ['readahead=x', /"readahead=x" needs a number/]
    ] as const) {
      const r = await nbdts(['mount', s.uri(), file, '-o', option])
      assert.equal(r.code, 1, option)
      assert.match(r.stderr, message)
    }
    assert.equal(isMounted(file), false)
  })

  test('a user other than root mounts through fusermount3: nobody mounts, reads, writes and unmounts', async () => {
    const s = await server()
    const home = path.join(dir, 'nobody')
    mkdirSync(home)
    chownSync(home, NOBODY, NOBODY)
    const file = path.join(home, 'disk.img')
    const log = path.join(home, 'mount.log')
    const cli = path.join(packageFor('nobody', dir), 'dist/cli/main.js')
    const controlDir = `/tmp/nbdts-${NOBODY}`
    const hadControlDir = existsSync(controlDir)
    const restore = openDevFuse()
    try {
      assert.equal((await asNobody('touch', [file])).code, 0)
      const mount = await asNobody(process.execPath, [cli, 'mount', s.uri(), file, '--log-file', log])
      detachOnExit(file)
      assert.equal(mount.code, 0, `${mount.stderr}${existsSync(log) ? readFileSync(log, 'utf8') : ''}`)
      const pid = Number(/daemon pid (\d+)/.exec(mount.stdout)?.[1])
      const entry = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === file) ?? ''
      assert.match(entry, new RegExp(` - fuse\\.nbdts nbdts:${pid} .*user_id=${NOBODY},group_id=${NOBODY}`))
      assert.match(readFileSync(log, 'utf8'), /fusermount3/)
      assert.match(readFileSync(log, 'utf8'), new RegExp(`control socket: ${controlDir}/`))
      assert.equal(await writeAsNobody(file), 'ok')
      assert.equal(await readAsNobody(file), 'ok')
      // Without allow_other the kernel lets no one else in, root included.
      assert.throws(() => statSync(file), /EACCES/)
      if (!/^\s*user_allow_other\s*$/m.test(readFileSync('/etc/fuse.conf', 'utf8'))) {
        const other = path.join(home, 'other.img')
        await asNobody('touch', [other])
        const refused = await asNobody(process.execPath, [cli, 'mount', s.uri(), other, '-o', 'allow_other'])
        assert.equal(refused.code, 1)
        assert.match(refused.stderr, /option allow_other only allowed if 'user_allow_other' is set in \/etc\/fuse.conf/)
      }
      const umount = await asNobody(process.execPath, [cli, 'umount', file])
      assert.equal(umount.code, 0, umount.stderr)
      assert.match(umount.stdout, /unmounted$/m)
      assert.equal(isMounted(file), false)
      for (let i = 0; i < 250 && existsSync(`/proc/${pid}`); i++) await sleep(20)
      assert.equal(existsSync(`/proc/${pid}`), false, 'the daemon is gone')
    } finally {
      restore()
      if (isMounted(file)) await run('umount', ['-l', file]).catch(() => {})
      if (!hadControlDir) rmSync(controlDir, { recursive: true, force: true })
    }
  })
})
