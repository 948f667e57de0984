import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { after, before, test } from 'node:test'
import '../helpers/assert.ts'
import { nbdts } from '../helpers/cli.ts'
import { run, startNbdkit, tempDir, type RunningServer } from '../helpers/servers.ts'

/** A command's exit code, whatever it is. */
function exitCode (command: string, args: string[]): Promise<number | null> {
  return new Promise((resolve, reject) => {
    spawn(command, args, { stdio: 'ignore' }).on('error', reject).on('close', resolve)
  })
}

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

test('info --can and --is: nbdinfo\'s exit codes (0 true, 2 false, 1 error), nothing printed', async () => {
  const rw = await startNbdkit(dir, ['--filter=blocksize-policy', 'memory', '1M', 'blocksize-preferred=4096'], 'rw')
  try {
    const queries = ['--can connect', '--can read', '--can write', '--can flush', '--can fua', '--can trim', '--can zero', '--can fast-zero',
      '--can cache', '--can df', '--can multi-conn', '--can structured-reply', '--is read-only', '--is rotational', '--is tls', '--can frob']
    for (const server of [mem, rw]) {
      for (const q of queries) {
        const args = [...q.split(' '), server.uri()]
        const theirs = await exitCode('nbdinfo', args)
        const ours = await nbdts(['info', ...args])
        assert.equal(ours.code, theirs, `${q} on ${server.uri()}: ${ours.stderr}`)
        if (ours.code !== 1) assert.equal(ours.stdout + ours.stderr, '', `${q} prints nothing`)
      }
    }
    // Known answers, so that agreeing with nbdinfo is not agreeing on nothing.
    assert.equal((await nbdts(['info', '--can', 'write', mem.uri()])).code, 2)
    assert.equal((await nbdts(['info', '--is', 'read-only', mem.uri()])).code, 0)
    assert.equal((await nbdts(['info', '--can', 'write', rw.uri()])).code, 0)
    // The last of --can/--is wins, as in nbdinfo.
    assert.equal((await nbdts(['info', '--can', 'read', '--is', 'tls', mem.uri()])).code, 2)
    // A server that is not there is an error, not "false".
    assert.equal((await nbdts(['info', '--can', 'connect', 'nbd+unix:///?socket=/nonexistent/x.sock'])).code, 1)
  } finally {
    await rw.stop()
  }
})

test('info --size, --map=CONTEXT and --map --totals print what nbdinfo prints', async () => {
  const size = await nbdts(['info', '--size', listed.uri('alpha')])
  assert.equal(size.code, 0, size.stderr)
  assert.equal(size.stdout, '2097152\n')
  assert.equal((await nbdts(['info', '--size', '--json', listed.uri('alpha')])).stdout, '2097152\n')
  const norm = (text: string): string => text.trim().split('\n').map((l) => l.trim().split(/\s+/).join(' ')).join('\n')
  const mixed = await startNbdkit(dir, ['data', '@0x10000 1 2 3 @0x30000 4', 'size=1M'], 'mixed')
  try {
    for (const args of [['--map=base:allocation'], ['--map', '--totals'], ['--map=base:allocation', '--totals']]) {
      const ours = await nbdts(['info', ...args, mixed.uri()])
      assert.equal(ours.code, 0, ours.stderr)
      assert.equal(norm(ours.stdout), norm((await run('nbdinfo', [...args, mixed.uri()])).stdout.toString()), args.join(' '))
    }
    const totals = JSON.parse((await nbdts(['info', '--map', '--totals', '--json', mixed.uri()])).stdout) as Array<Record<string, unknown>>
    const theirs = JSON.parse((await run('nbdinfo', ['--map', '--totals', '--json', mixed.uri()])).stdout.toString()) as Array<Record<string, unknown>>
    assert.deepEqual(totals, theirs)
    assert.ok(totals.length >= 2, 'data and holes')
  } finally {
    await mixed.stop()
  }
  // --map=CONTEXT names the context; a context the server lacks is an error.
  const missing = await nbdts(['info', '--map=qemu:dirty-bitmap:x', mem.uri()])
  assert.equal(missing.code, 1)
  assert.match(missing.stderr, /meta context "qemu:dirty-bitmap:x" was not negotiated/)
})

test('usage errors: one line and where the help is, exit 2, never the whole help', async () => {
  const cases: Array<[string[], RegExp]> = [
    [['info', '--size', '--map', mem.uri()], /^nbdts: --map and --size cannot be used together\n\(nbdts info --help for its usage\)\n$/],
    [['info', '--totals', mem.uri()], /^nbdts: --totals goes with --map\n/],
    [['info', '--bogus', mem.uri()], /^error: unknown option '--bogus'\n\(nbdts info --help for its usage\)\n$/],
    [['frob'], /^error: unknown command 'frob'\n\(nbdts --help lists the commands\)\n$/],
    [['copy'], /^error: missing required argument 'source'\n\(nbdts copy --help for its usage\)\n$/]
  ]
  for (const [args, message] of cases) {
    const r = await nbdts(args)
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`)
    assert.match(r.stderr, message)
    assert.ok(r.stderr.split('\n').length <= 3, `${args.join(' ')}: a short message, not the help:\n${r.stderr}`)
  }
})

test('--help says what the code does: TLS is required when credentials are given', async () => {
  const help = (await nbdts(['info', '--help'])).stdout.replace(/\s+/g, ' ')
  assert.match(help, /default: require for nbds:\/\/ and when credentials are given, else off/)
  assert.doesNotMatch(help, /on when credentials are given/)
})
