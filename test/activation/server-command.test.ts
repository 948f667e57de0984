/**
 * Systemd socket activation, libnbd style: nbdkit and qemu-nbd run as children on a socket we
 * created, with LISTEN_PID set to their own pid; the server ends with stop() or with us.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync, readFileSync, rmSync, statSync } from 'node:fs'
import path from 'node:path'
import { after, describe, test } from 'node:test'
import { NbdClient } from '../../src/index.ts'
import { startServerCommand } from '../../src/activation/index.ts'
import { rejectsWithCode, within } from '../helpers/assert.ts'
import { run, tempDir } from '../helpers/servers.ts'

const dir = tempDir()

/** Running: a zombie (exited, not yet reaped by whatever init this machine has) is not. */
function alive (pid: number): boolean {
  try { process.kill(pid, 0) } catch { return false }
  try { return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8')) } catch { return false }
}

describe('startServerCommand', () => {
  test('nbdkit: LISTEN_PID is its own pid, reads and writes work, stop() ends it and removes the socket', async () => {
    const server = await startServerCommand(['nbdkit', 'memory', '4M'], { stderr: 'pipe' })
    try {
      assert.match(server.uri, /^nbd\+unix:\/\/\/\?socket=\/.+\/sock$/)
      assert.equal(statSync(path.dirname(server.socket)).mode & 0o777, 0o700)
      const client = await NbdClient.connect({ uri: server.uri, open: server.open })
      // Once it answers, the shell has exec'd nbdkit, which only takes the socket when LISTEN_PID
      // names it: the child *is* nbdkit.
      const environ = readFileSync(`/proc/${server.child.pid!}/environ`, 'utf8').split('\0')
      assert.ok(environ.includes(`LISTEN_PID=${server.child.pid!}`), 'LISTEN_PID is the server\'s pid')
      assert.ok(environ.includes('LISTEN_FDS=1'))
      assert.ok(environ.includes('LISTEN_FDNAMES=nbd'))
      assert.match(readFileSync(`/proc/${server.child.pid!}/cmdline`, 'utf8'), /^nbdkit\0/)
      await client.write(Buffer.alloc(4096, 0x5a), 8192)
      assert.deepEqual(await client.read(4096, 8192), Buffer.alloc(4096, 0x5a))
      // Two connections at once: the socket stays with the server.
      const second = await NbdClient.connect(server.uri)
      assert.equal(second.sizeBigInt, 4n << 20n)
      await Promise.all([client.close(), second.close()])
    } finally {
      await server.stop()
    }
    assert.equal(alive(server.child.pid!), false)
    assert.equal(existsSync(path.dirname(server.socket)), false)
    // nbdkit exits 0 on SIGTERM.
    assert.deepEqual(server.exitStatus, { code: 0, signal: null })
  })

  test('qemu-nbd serves the socket too', async () => {
    const image = path.join(dir, 'q.img')
    await run('qemu-img', ['create', '-q', '-f', 'raw', image, '2M'])
    const server = await startServerCommand(['qemu-nbd', '-f', 'raw', '-t', image], { stderr: 'pipe' })
    try {
      const client = await NbdClient.connect({ uri: server.uri, open: server.open })
      assert.equal(client.sizeBigInt, 2n << 20n)
      await client.write(Buffer.from('qemu'), 0)
      await client.flush()
      await client.close()
    } finally {
      await server.stop()
    }
    assert.equal(readFileSync(image).subarray(0, 4).toString(), 'qemu')
  })

  test('a command that fails: connecting says how it exited, with its last stderr line', async () => {
    const server = await startServerCommand(['nbdkit', 'no-such-plugin-here'], { stderr: 'pipe' })
    await within(server.exited, 10_000, 'the failing server')
    const err = await rejectsWithCode(NbdClient.connect({ uri: server.uri, open: server.open }), 'NBD_ERR_CONNECTION')
    assert.match(err.message, /nbdkit exited with code 1 \(.*no-such-plugin-here/)
    await server.stop()
    assert.equal(existsSync(path.dirname(server.socket)), false)

    const missing = await startServerCommand(['/nonexistent/nbd-server-binary'], { stderr: 'pipe' })
    assert.equal((await within(missing.exited, 10_000)).code, 127)
    await missing.stop()
  })

  test('argv is passed as words, never through a shell', async () => {
    const marker = path.join(dir, 'not-created')
    // If any word reached a shell, `touch` would run.
    const server = await startServerCommand(['nbdkit', 'memory', `1M; touch ${marker}`, `$(touch ${marker})`], { stderr: 'pipe' })
    await within(server.exited, 10_000)
    await server.stop()
    assert.equal(existsSync(marker), false)
  })

  test('the server dies with its parent, even one killed by SIGKILL', async () => {
    // A child node process starts nbdkit (no --exit-with-parent) and prints its pid; we kill the node.
    const script = `
      import { startServerCommand } from ${JSON.stringify(new URL('../../src/activation/index.ts', import.meta.url).href)}
      const s = await startServerCommand(['nbdkit', 'memory', '1M'], { stderr: 'ignore' })
      process.stdout.write(String(s.child.pid) + ' ' + s.socket + '\\n')
      setInterval(() => {}, 1000)
    `
    const parent = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
    const [pid, socket] = await within(new Promise<[number, string]>((resolve) => {
      parent.stdout.setEncoding('utf8').once('data', (d: string) => {
        const [p, s] = d.trim().split(' ')
        resolve([Number(p), s!])
      })
    }), 20_000, 'the parent starting nbdkit')
    // A parent killed by SIGKILL runs no exit hook: its private socket directory is ours to remove.
    after(() => { rmSync(path.dirname(socket), { recursive: true, force: true }) })
    assert.ok(alive(pid))
    const gone = new Promise((resolve) => parent.once('exit', resolve))
    parent.kill('SIGKILL')
    await gone
    // The kernel sends SIGTERM at once; nbdkit's exit can take a while on a loaded machine.
    const deadline = Date.now() + 30_000
    while (alive(pid) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50))
    assert.equal(alive(pid), false, 'nbdkit outlived its parent')
  })

  test('an aborted signal starts nothing; an empty command is refused', async () => {
    const ac = new AbortController()
    ac.abort()
    await rejectsWithCode(startServerCommand(['nbdkit', 'memory', '1M'], { signal: ac.signal }), 'ABORT_ERR')
    await rejectsWithCode(startServerCommand([]), 'NBD_ERR_INVALID_ARGUMENT')
  })
})
