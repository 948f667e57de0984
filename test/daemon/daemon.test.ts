/**
 * `nbdts daemon` end to end: real nbdkit, real FUSE mounts, the real control socket, a fake
 * systemd NOTIFY_SOCKET. One daemon per test, each on its own socket in the test's directory.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { readFileSync, statSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { after, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseConfig } from '../../src/daemon/config.ts'
import { within } from '../helpers/assert.ts'
import { nbdts } from '../helpers/cli.ts'
import { startDaemon, type TestDaemon } from '../helpers/daemon.ts'
import { isMounted } from '../helpers/mounts.ts'
import { notifySocket } from '../helpers/notify-socket.ts'
import { run, startNbdkit, tcpPort, tempDir, type RunningServer } from '../helpers/servers.ts'

const dir = tempDir()
const cleanups: Array<() => Promise<void> | void> = []
after(async () => { for (const c of cleanups.reverse()) await c() })

async function server (name: string, size = '16M'): Promise<RunningServer> {
  const s = await startNbdkit(dir, ['memory', size], name)
  cleanups.push(() => s.stop('SIGKILL'))
  return s
}

async function daemon (name: string, options: Parameters<typeof startDaemon>[2] = {}): Promise<TestDaemon> {
  const d = await startDaemon(dir, name, options)
  cleanups.push(() => d.stop())
  assert.match(d.ready, /^ready /, d.logText())
  return d
}

function image (name: string): string {
  const file = path.join(dir, name)
  writeFileSync(file, '')
  return file
}

function section (uri: string, file: string, extra = ''): string {
  return `[[mount]]\nuri = "${uri}"\nfile = "${file}"\n${extra}\n`
}

/** A 64 KiB pattern for `tag`, written at `offset` through `file` and read back. */
async function roundTrip (file: string, tag: string, offset = 0): Promise<void> {
  const data = Buffer.alloc(65536, `${tag}:`)
  const source = path.join(dir, `${path.basename(file)}.${tag}.bin`)
  writeFileSync(source, data)
  await run('dd', [`if=${source}`, `of=${file}`, 'bs=65536', `seek=${offset}`, 'conv=notrunc,fsync', 'oflag=direct', 'status=none'])
  const back = (await run('dd', [`if=${file}`, 'bs=65536', `skip=${offset}`, 'count=1', 'iflag=direct', 'status=none'])).stdout
  assert.ok(back.equals(data), `${file}: read back what was written`)
}

describe('nbdts daemon', () => {
  test('systemd Type=notify: READY once the mounts are up, WATCHDOG, RELOADING with MONOTONIC_USEC, STOPPING; metrics over HTTP and show metrics; SIGHUP', async () => {
    const a = await server('n-a')
    const b = await server('n-b')
    const fa = image('n-a.img')
    const fb = image('n-b.img')
    const notify = notifySocket(path.join(dir, 'notify.sock'))
    cleanups.push(() => { notify.close() })
    const port = tcpPort()
    const d = await daemon('n', {
      config: `[daemon]\ncontrol-timeout = "3s"\n\n[defaults]\nreconnect-delay = "5s"\n\n${section(a.uri(), fa)}${section(b.uri(), fb, 'connections = 1')}`,
      args: ['--metrics-listen', `127.0.0.1:${port}`],
      env: { ...process.env, NOTIFY_SOCKET: notify.path, WATCHDOG_USEC: '200000' }
    })
    assert.match(d.ready, /2 mounts: 2 up/)
    const ready = await within(notify.next((m) => m.includes('READY=1')), 5000, 'READY=1')
    assert.match(ready, /^READY=1\nSTATUS=2 mounts: 2 up\n$/, 'READY only once both mounts are up')
    assert.equal(isMounted(fa) && isMounted(fb), true)
    // Counted after the wait: the first WATCHDOG may come just after READY (a race the test once lost).
    await sleep(450)
    assert.ok(notify.messages.filter((m) => m === 'WATCHDOG=1\n').length >= 3, `WATCHDOG=1 every 100 ms (${notify.messages.join('|')})`)

    await roundTrip(fa, 'a')
    await roundTrip(fb, 'b')
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
    assert.match(metrics, new RegExp(`^nbdts_requests_total\\{mount="${fa}",command="write"\\} [1-9]`, 'm'))
    assert.match(metrics, new RegExp(`^nbdts_bytes_total\\{mount="${fb}",direction="read"\\} [1-9]`, 'm'))
    assert.match(metrics, new RegExp(`^nbdts_request_duration_seconds_bucket\\{le="\\+Inf",mount="${fa}",command="write"\\} [1-9]`, 'm'))
    assert.match(metrics, new RegExp(`^nbdts_connection_state\\{mount="${fb}",connection="1",state="CONNECTED"\\} 1$`, 'm'))
    assert.match(metrics, new RegExp(`^nbdts_mount_state\\{mount="${fa}",state="up"\\} 1$`, 'm'))
    assert.match(metrics, /^nbdts_errors_total\{mount=".*",kind="server"\} 0$/m)
    assert.match(metrics, /^nbdts_reconnects_total\{/m)
    assert.match(metrics, /^nbdts_in_flight\{/m)
    const shown = await d.ctl('show', 'metrics')
    assert.equal(shown.ok, true)
    assert.match(shown.text, /^# TYPE nbdts_request_duration_seconds histogram$/m)
    assert.match(shown.text, new RegExp(`^nbdts_export_size_bytes\\{mount="${fa}"\\} 16777216$`, 'm'))

    const before = notify.messages.length
    const sent = process.hrtime.bigint() / 1000n
    assert.equal((await d.ctl('reconfigure')).text, 'ok')
    const reloading = await within(notify.next((m) => m.includes('RELOADING=1'), before), 5000, 'RELOADING=1')
    const usec = BigInt(/MONOTONIC_USEC=(\d+)/.exec(reloading)?.[1] ?? '0')
    assert.ok(usec >= sent && usec - sent < 10_000_000n, `MONOTONIC_USEC is CLOCK_MONOTONIC (${usec} vs ${sent})`)
    const afterReload = notify.messages.indexOf(reloading)
    await within(notify.next((m) => m.includes('READY=1'), afterReload + 1), 5000, 'READY=1 after the reload')

    process.kill(d.pid, 'SIGHUP')
    for (let i = 0; i < 100 && !/reconfigures: 2/.test((await d.ctl('show', 'daemon')).text); i++) await sleep(20)
    assert.match((await d.ctl('show', 'daemon')).text, /reconfigures: 2/, 'SIGHUP reconfigures')
    assert.equal(isMounted(fa) && isMounted(fb), true, 'an unchanged config touches nothing')

    assert.equal((await d.ctl('shutdown')).text, 'ok')
    assert.equal(await within(d.exited, 30_000, 'the daemon\'s exit'), 0)
    assert.match(await within(notify.next((m) => m.includes('STOPPING=1')), 1000, 'STOPPING=1'), /STOPPING=1\nSTATUS=stopping: /)
    assert.equal(isMounted(fa) || isMounted(fb), false, 'both unmounted')
    await assert.rejects(fetch(`http://127.0.0.1:${port}/metrics`), 'the metrics listener is closed')
  })

  test('reconfigure applies the difference: added, removed, remounted, changed live, and the untouched mount is not disturbed', async () => {
    const s = await server('r', '64M')
    const files = Object.fromEntries(['keep', 'drop', 'live', 'remount', 'new'].map((n) => [n, image(`r-${n}.img`)])) as Record<string, string>
    const base = (remountExtra: string, liveDelay: string, withDrop: boolean, withNew: boolean): string =>
      '[defaults]\nconnections = 1\n\n' + section(s.uri(), files.keep!) + (withDrop ? section(s.uri(), files.drop!) : '') +
      section(s.uri(), files.live!, `reconnect-delay = "${liveDelay}"`) + section(s.uri(), files.remount!, remountExtra) + (withNew ? section(s.uri(), files.new!) : '')
    const d = await daemon('r', { config: base('', '10s', true, false) })
    assert.match(d.ready, /4 mounts: 4 up/)
    await roundTrip(files.drop!, 'drop', 1)
    const keepBefore = JSON.parse((await d.ctl('show', 'mount', files.keep!, 'json')).text) as { uptimeSeconds: number, connections: string }

    // I/O on the untouched mount all through the reconfigure.
    const load = run('fio', ['--name=keep', `--filename=${files.keep}`, '--rw=randrw', '--bs=4k', '--direct=1', '--ioengine=psync',
      '--size=4M', '--offset=32M', '--runtime=3', '--time_based', '--output-format=json'], { timeoutMs: 60_000 })
    load.catch(() => {})
    await sleep(500)
    writeFileSync(path.join(dir, 'r.toml'), base('readonly = true', '45s', false, true))
    assert.equal((await d.ctl('reconfigure')).text, 'ok')
    await d.waitFor(files.drop!, 'gone')
    await d.waitFor(files.new!, 'up')
    await d.waitFor(files.remount!, 'up')
    for (let i = 0; i < 100 && !/ok at/.test((await d.ctl('show', 'daemon')).text); i++) await sleep(20)
    assert.match((await d.ctl('show', 'daemon')).text, /last-reconfigure: ok at \S+: 1 added, 1 removed, 1 remounted, 1 changed, 1 untouched/)
    assert.equal(isMounted(files.drop!), false, 'the removed mount is unmounted')
    assert.match(d.logText(), new RegExp(`${files.drop}: gone; client .*"bytesWritten":65536`), 'and was flushed and closed')
    assert.match((await d.ctl('show', 'mount', files.live!, 'config')).text, /reconnect-delay: 45000ms/)
    await assert.rejects(run('dd', ['if=/dev/zero', `of=${files.remount}`, 'bs=4096', 'count=1', 'conv=notrunc', 'status=none']), /Read-only file system/)
    await roundTrip(files.new!, 'new', 2)

    const fio = JSON.parse((await load).stdout.toString()) as { jobs: Array<{ error: number, read: { io_bytes: number }, write: { io_bytes: number } }> }
    assert.equal(fio.jobs[0]!.error, 0)
    assert.ok(fio.jobs[0]!.read.io_bytes > 0 && fio.jobs[0]!.write.io_bytes > 0)
    const keepAfter = JSON.parse((await d.ctl('show', 'mount', files.keep!, 'json')).text) as { uptimeSeconds: number, connections: string }
    const stats = JSON.parse((await d.ctl('show', 'mount', files.keep!, 'stats', 'json')).text) as { client: { reconnects: number } }
    assert.equal(stats.client.reconnects, 0, 'the untouched mount kept its connection')
    assert.ok(keepAfter.uptimeSeconds >= keepBefore.uptimeSeconds + 3, 'and is the same mount')
  })

  test('add mount (and persist), set, disconnect, reconnect, del; a busy mount is refused unless lazy; nbdts mount and umount through the daemon; kill -9 leaves what nbdts umount clears', async () => {
    const s = await server('c')
    const d = await daemon('c', { config: '[defaults]\nconnections = 1\n' })
    const config = path.join(dir, 'c.toml')
    const mode = statSync(config).mode
    const [f1, f2, f3] = [image('c-1.img'), image('c-2.img'), image('c-3.img')]
    assert.equal((await d.ctl('add', 'mount', s.uri(), f1, 'reconnect-delay', '20s')).text, 'ok')
    assert.equal((await d.ctl('add', 'mount', s.uri(), f2, 'max-in-flight', '8', 'persist')).text, 'ok')
    await d.waitFor(f1, 'up')
    await d.waitFor(f2, 'up')
    await roundTrip(f1, 'one')
    const written = parseConfig(readFileSync(config, 'utf8'), config)
    assert.deepEqual(written.mounts.get(f2)?.settings, { maxInFlight: 8 }, 'persisted as a [[mount]] section')
    assert.equal(written.mounts.has(f1), false, 'only what was asked')
    assert.match(readFileSync(config, 'utf8'), /^\[defaults\]\nconnections = 1\n/, 'the rest of the file as it was')
    assert.equal(statSync(config).mode, mode, 'its mode kept')
    assert.equal((await d.ctl('add', 'mount', s.uri(), f1)).ok, false, 'a file is mounted once')

    const table = await d.ctl('show', 'mounts')
    assert.match(table.text, /^FILE +URI +STATE +CONNECTIONS +SIZE +IOPS +MiB\/s +P99 +IN FLIGHT$/m)
    assert.match(table.text, new RegExp(`^${f1} +nbd\\+unix:.* +up +ok +16M +\\d+ +[\\d.]+ +\\S+ +\\d+$`, 'm'))
    assert.equal((await d.ctl('set', 'mount', f1, 'reconnect-delay', '60s')).text, 'ok')
    assert.match((await d.ctl('show', 'mount', f1, 'config')).text, /reconnect-delay: 60000ms/)
    assert.equal((await d.ctl('set', 'max-in-flight', '3')).ok, false, 'without FILE, only with one mount')
    assert.equal((await d.ctl('disconnect', 'mount', f1)).text, 'ok')
    for (let i = 0; i < 100 && !/CONNECTING_WAIT/.test((await d.ctl('show', 'mount', f1)).text); i++) await sleep(20)
    assert.match((await d.ctl('show', 'mount', f1)).text, /connections: CONNECTING_WAIT/)
    assert.equal((await d.ctl('reconnect', 'mount', f1)).text, 'ok')
    for (let i = 0; i < 100 && !/connections: CONNECTED/.test((await d.ctl('show', 'mount', f1)).text); i++) await sleep(20)
    assert.match((await d.ctl('show', 'mount', f1, 'connections')).text, /state: CONNECTED/)

    // Busy: a process holds f1 open.
    const holder = spawn('sh', ['-c', `exec 3<${f1}; echo held; exec sleep 60`], { stdio: ['ignore', 'pipe', 'ignore'] })
    cleanups.push(() => { holder.kill('SIGKILL') })
    await within(new Promise((resolve) => holder.stdout.once('data', resolve)), 5000, 'the holder')
    const refused = await d.ctl('del', 'mount', f1)
    assert.equal(refused.ok, false)
    assert.match(refused.text, new RegExp(`${f1} is busy \\(in use by pid ${holder.pid} \\(sleep\\)\\), so it stays mounted. del mount ${f1} lazy`))
    const noShutdown = await d.ctl('shutdown')
    assert.equal(noShutdown.ok, false)
    assert.match(noShutdown.text, /busy, so nothing was changed: .*shutdown lazy/)
    assert.equal(isMounted(f1), true)
    assert.equal((await d.ctl('del', 'mount', f1, 'lazy')).text, 'ok')
    for (let i = 0; i < 200 && isMounted(f1); i++) await sleep(20)
    assert.equal(isMounted(f1), false, 'detached')
    const stillServed = await run('dd', [`if=/proc/${holder.pid}/fd/3`, 'bs=65536', 'count=1', 'status=none'])
    assert.ok(stillServed.stdout.equals(Buffer.alloc(65536, 'one:')), 'and served until its last user lets go')
    assert.equal((await d.mounts()).find((m) => m.file === f1)?.state, 'removing')
    holder.kill('SIGKILL')
    await d.waitFor(f1, 'gone')

    // nbdts mount and umount, handed to the daemon (NBDTS_DAEMON_SOCKET names it).
    const env = { ...process.env, NBDTS_DAEMON_SOCKET: d.socket }
    const m = await nbdts(['mount', s.uri(), f3, '--connections', '1'], { env })
    assert.equal(m.code, 0, m.stderr)
    assert.match(m.stdout, new RegExp(`mounted .* at ${f3} \\(by the nbdts daemon on ${d.socket}\\)`))
    assert.equal((await d.mounts()).find((x) => x.file === f3)?.origin, 'ctl')
    await roundTrip(f3, 'three', 3)
    const u = await nbdts(['umount', f3])
    assert.equal(u.code, 0, u.stderr)
    assert.equal(u.stdout.trim(), `${f3}: unmounted`)
    assert.equal((await d.mounts()).some((x) => x.file === f3), false, 'umount waited until the daemon let it go')
    assert.equal((await d.ctl('del', 'mount', f2)).text, 'ok')
    await d.waitFor(f2, 'gone')

    // kill -9: the mounts stay, dead; nbdts umount clears them.
    assert.equal((await d.ctl('add', 'mount', s.uri(), f1)).text, 'ok')
    assert.equal((await d.ctl('add', 'mount', s.uri(), f3)).text, 'ok')
    await d.waitFor(f1, 'up')
    await d.waitFor(f3, 'up')
    process.kill(d.pid, 'SIGKILL')
    await d.exited
    for (const f of [f1, f3]) {
      assert.equal(isMounted(f), true, 'left behind')
      const cleared = await nbdts(['umount', f])
      assert.equal(cleared.code, 0, cleared.stderr)
      assert.match(cleared.stdout, /removed a stale mount \(its daemon was gone\)/)
      assert.equal(isMounted(f), false)
    }
  })
})
