import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import '../helpers/assert.ts'
import { nbdts } from '../helpers/cli.ts'
import { run, startNbdkit, tempDir, type RunningServer } from '../helpers/servers.ts'

const dir = tempDir()
let mem: RunningServer
let listed: RunningServer

before(async () => {
  mem = await startNbdkit(dir, ['-r', 'data', '@0x10000 1 2 3', 'size=1M'], 'data')
  listed = await startNbdkit(dir, ['--filter=exportname', '--filter=blocksize-policy', 'memory', '2M', 'exportname-list=explicit',
    'exportname=alpha', 'exportname=beta', 'exportdesc=fixed:test disk', 'exportname-strict=true', 'blocksize-minimum=512', 'blocksize-preferred=4096', 'blocksize-maximum=1M'], 'listed')
})
after(async () => { await Promise.all([mem.stop(), listed.stop()]) })

test('info: like nbdinfo, with our own client', async () => {
  const r = await nbdts(['info', mem.uri()])
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stdout, /^protocol: newstyle-fixed without TLS, using structured packets$/m)
  assert.match(r.stdout, /^\texport-size: 1048576 \(1M\)$/m)
  assert.match(r.stdout, /^\t\tbase:allocation$/m)
  assert.match(r.stdout, /^\tis_read_only: true$/m)
  assert.match(r.stdout, /^\tcan_multi_conn: true$/m)
})

test('info --json agrees with nbdinfo --json on every flag and the size', async () => {
  const ours = JSON.parse((await nbdts(['info', '--json', listed.uri('alpha')])).stdout) as { exports: Array<Record<string, unknown>> }
  const theirs = JSON.parse((await run('nbdinfo', ['--json', listed.uri('alpha')])).stdout.toString()) as { exports: Array<Record<string, unknown>> }
  const keys = ['export-name', 'export-size', 'is_rotational', 'is_read_only', 'can_cache', 'can_df', 'can_fast_zero', 'can_flush',
    'can_fua', 'can_multi_conn', 'can_trim', 'can_zero', 'block_size_minimum', 'block_size_preferred', 'block_size_maximum', 'description', 'contexts']
  for (const key of keys) assert.deepEqual(ours.exports[0]![key], theirs.exports[0]![key], key)
})

test('info --list and --map', async () => {
  const list = await nbdts(['info', '--list', listed.uri()])
  assert.equal(list.code, 0, list.stderr)
  assert.match(list.stdout, /export="alpha":\n\tdescription: test disk/)
  assert.match(list.stdout, /export="beta":/)
  const map = await nbdts(['info', '--map', mem.uri()])
  assert.equal(map.code, 0, map.stderr)
  const theirs = (await run('nbdinfo', ['--map', mem.uri()])).stdout.toString()
  const norm = (text: string): string => text.trim().split('\n').map((l) => l.trim().split(/\s+/).join(' ')).join('\n')
  assert.equal(norm(map.stdout), norm(theirs))
  const json = JSON.parse((await nbdts(['info', '--map', '--json', mem.uri()])).stdout) as unknown[]
  assert.deepEqual(json[0], { offset: 0, length: 65536, type: 3, description: 'hole,zero' })
})

test('errors: one line, non-zero exit, no stack trace', async () => {
  const cases: Array<[string[], RegExp, number]> = [
    [['info', 'nbd+unix:///?socket=/nonexistent/x.sock'], /^nbdts: cannot connect to unix:\/nonexistent\/x.sock: ENOENT\n$/, 1],
    [['info', 'nbd://h/?tls-verfy-peer=1'], /^nbdts: unknown query parameter "tls-verfy-peer"/, 1],
    [['info', listed.uri('gamma')], /^nbdts: the server has no export named "gamma"/, 1],
    [['info', '--map', '--context', 'qemu:dirty-bitmap:x', mem.uri()], /^nbdts: meta context "qemu:dirty-bitmap:x" was not negotiated/, 1],
    [['info', '--open-timeout', 'soon', mem.uri()], /not a duration/, 2],
    [['info'], /missing required argument/, 2]
  ]
  for (const [args, message, code] of cases) {
    const r = await nbdts(args)
    assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`)
    assert.match(r.stderr, message)
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace')
  }
})

test('info --open-timeout waits for a server that starts late', async () => {
  const late = `${dir}/late.sock`
  const started = Date.now()
  const result = nbdts(['info', '--open-timeout', '10s', `nbd+unix:///?socket=${late}`])
  await new Promise((resolve) => setTimeout(resolve, 1500))
  const server = await startNbdkit(dir, ['memory', '1M'], 'late')
  const r = await result
  await server.stop()
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stdout, /export-size: 1048576/)
  assert.ok(Date.now() - started >= 1500)
})
