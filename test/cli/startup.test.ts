/**
 * Each command loads only its own code: `--version` no client, `info` no daemon, metrics or
 * FUSE, `ctl` (run in loops by admins and scripts) only the control socket's client. What a
 * command imports is most of its start-up time (bench/README.md has the figures), so a static
 * import that pulls a heavy module back in fails here. The first tests run the modules
 * (dist/cli/main.js), where each import shows; the bundle the bin runs those commands from
 * evaluates the same modules in the same order (esbuild initialises a module when it is
 * imported), and the last tests check the bin, its bundle and its code cache.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { chmodSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { after, before, test } from 'node:test'
import '../helpers/assert.ts'
import { BIN, CLI, nbdts } from '../helpers/cli.ts'
import { startDaemon, type TestDaemon } from '../helpers/daemon.ts'
import { startNbdkit, tempDir, type RunningServer } from '../helpers/servers.ts'

const dir = tempDir()
const hook = fileURLToPath(new URL('../helpers/record-imports.mjs', import.meta.url))
let server: RunningServer
let daemon: TestDaemon

before(async () => {
  server = await startNbdkit(dir, ['memory', '1M'], 'mem')
  daemon = await startDaemon(dir, 'startup')
})
after(async () => { await Promise.all([server.stop(), daemon.stop()]) })

/** Runs the built CLI (or the bin); returns its exit code and the modules it loaded, relative to the package. */
async function imports (args: string[], entry = CLI): Promise<{ code: number | null, loaded: string[] }> {
  const record = path.join(dir, `imports-${args[0]}.txt`)
  rmSync(record, { force: true })
  const code = await new Promise<number | null>((resolve, reject) => {
    spawn(process.execPath, ['--import', hook, entry, ...args], { stdio: 'ignore', env: { ...process.env, NBDTS_RECORD_IMPORTS: record, XDG_CACHE_HOME: path.join(dir, 'cache') } })
      .on('error', reject).on('close', resolve)
  })
  const root = fileURLToPath(new URL('../..', import.meta.url))
  const loaded = readFileSync(record, 'utf8').split('\n').filter((l) => l !== '')
    .map((l) => l.replace(/^require:/, '').replace(/^file:\/\//, '').replace(root, ''))
  return { code, loaded }
}

const HEAVY = [/^dist\/daemon\//, /^dist\/fuse\//, /node_modules\/prom-client\//, /node_modules\/smol-toml\//, /node_modules\/cli-progress\//]

function assertNone (loaded: string[], patterns: RegExp[], what: string): void {
  const found = loaded.filter((m) => patterns.some((p) => p.test(m)))
  assert.deepEqual(found, [], `${what} loads modules it does not use`)
}

test('--version loads no client, daemon, FUSE or control code, nor commander', async () => {
  const { code, loaded } = await imports(['--version'])
  assert.equal(code, 0)
  assert.ok(loaded.some((m) => m.startsWith('dist/cli/main.js')), 'the hook saw the CLI')
  assertNone(loaded, [...HEAVY, /^dist\/client\//, /^dist\/control\//, /^dist\/copy\//, /node_modules\/koffi\//, /node_modules\/commander\//], '--version')
})

test('info loads the client, and no daemon, metrics, config, FUSE or control code', async () => {
  const { code, loaded } = await imports(['info', '--size', server.uri()])
  assert.equal(code, 0)
  assert.ok(loaded.some((m) => m.startsWith('dist/client/nbd-client.js')), 'the hook saw the client')
  // koffi (40-60 ms to load) only widens a Unix socket's send buffer, later than info lives;
  // node:tls (~6 ms) is loaded by a connection that uses TLS.
  assertNone(loaded, [...HEAVY, /^dist\/control\//, /^dist\/copy\/(copier|progress|file-endpoint)/, /node_modules\/koffi\//, /^node:tls$/], 'info')
})

test('ctl show mounts loads the control client and grammar, not the NBD client, the daemon, the control server or commander', async () => {
  const { code, loaded } = await imports(['ctl', '--socket', daemon.socket, 'show', 'mounts'])
  assert.equal(code, 0)
  assert.ok(loaded.some((m) => m.startsWith('dist/control/client.js')), 'the hook saw the control client')
  // koffi and peer-credentials are used: the client checks who answers before it sends (issue 23).
  assert.ok(loaded.some((m) => m.startsWith('dist/control/peer-credentials.js')), 'the peer is checked')
  assertNone(loaded, [...HEAVY, /^dist\/client\//, /^dist\/control\/(control-server|config-lock)/, /node_modules\/async-mutex\//, /node_modules\/commander\//], 'ctl show mounts')
})

test('ctl --json is the command\'s json form; multipathd\'s trailing json word still works', async () => {
  const flag = await nbdts(['ctl', '--socket', daemon.socket, '--json', 'show', 'daemon'])
  assert.equal(flag.code, 0, flag.stderr)
  const shown = JSON.parse(flag.stdout) as { pid: number }
  assert.equal(shown.pid, daemon.pid)
  const word = await nbdts(['ctl', '--socket', daemon.socket, 'show', 'daemon', 'json'])
  assert.equal(word.code, 0, word.stderr)
  assert.equal((JSON.parse(word.stdout) as { pid: number }).pid, daemon.pid)
  // Both at once is the same command, not "json json".
  assert.equal((await nbdts(['ctl', '--socket', daemon.socket, 'show', 'daemon', 'json', '--json'])).code, 0)
})

test('ctl\'s own flag reader and commander read the same command lines, and leave the rest to commander', async () => {
  const { buildProgram } = await import('../../src/cli/main.ts')
  const { parseCtlArgs } = await import('../../src/cli/ctl.ts')
  const lines = [
    ['show', 'mounts'],
    ['--socket', '/run/x.sock', 'show', 'mounts'],
    ['--socket=/run/x.sock', '--timeout', '250', 'show', 'mount', '/srv/a.img', 'stats'],
    ['show', 'mounts', '--json'],
    ['--mount', '/srv/a.img', '--json', 'show', 'daemon', 'json'],
    ['-k', '--socket', '/run/x.sock'],
    ['--timeout=9000', '--', 'show', 'mounts']
  ]
  for (const args of lines) {
    const program = await buildProgram()
    let seen: unknown
    program.commands.find((c) => c.name() === 'ctl')!.action((words: string[], options: Record<string, unknown>) => { seen = { words, options: { ...options } } })
    await program.parseAsync(['ctl', ...args], { from: 'user' })
    assert.deepEqual(parseCtlArgs(args), seen, args.join(' '))
  }
  for (const args of [['--help'], ['--timeout', '0', 'show', 'mounts'], ['--timeout', 'soon'], ['--bogus', 'show'], ['--socket']]) {
    assert.equal(parseCtlArgs(args), undefined, `${args.join(' ')} is commander's to answer`)
  }
})

test('the bin answers --version itself, info, ctl and copy from its bundle, and runs the other commands from the modules', async () => {
  for (const args of [['--version'], ['info', '--size', server.uri()], ['ctl', '--socket', daemon.socket, 'show', 'mounts'], ['copy', server.uri(), 'null:']]) {
    const { code, loaded } = await imports(args, BIN)
    assert.equal(code, 0, args.join(' '))
    // The hook sees ES modules and require()d files (and the bin itself): the bundle is neither
    // (bin.cts compiles it).
    assertNone(loaded, [/^dist\/(?!cli\/bin\.cjs$)/, ...HEAVY], `the bin's ${args[0]!}`)
    if (args[0] === 'info') assertNone(loaded, [/node_modules\//], 'the bin\'s info')
  }
  const { code, loaded } = await imports(['mount', '--help'], BIN)
  assert.equal(code, 0)
  assert.ok(loaded.some((m) => m.startsWith('dist/cli/main.js')), 'mount runs from the modules')
})

test('the bundle holds info\'s, ctl\'s and copy\'s code and not the daemon\'s or FUSE\'s, with the licences of what it inlines', () => {
  const bundle = readFileSync(path.join(path.dirname(BIN), 'nbdts.cjs'), 'utf8')
  assert.match(bundle, /^\/\/ nbdts-bundle [0-9a-f]{16} /)
  // What esbuild put in (scripts/bundle-cli.ts lists it).
  const modules = readFileSync(path.join(path.dirname(BIN), 'nbdts.modules.txt'), 'utf8').split('\n')
  for (const inside of ['src/cli/info.ts', 'src/cli/ctl.ts', 'src/cli/copy.ts', 'src/copy/copier.ts', 'src/client/nbd-client.ts', 'src/control/client.ts', 'node_modules/commander/index.js']) assert.ok(modules.includes(inside), inside)
  assertNone(modules, [/^src\/daemon\//, /^src\/fuse\//, /prom-client|smol-toml|cli-progress|koffi/], 'the bundle')
  assert.match(bundle, /commander@[\d.]+ \(MIT\):\n\n.*MIT License/s)
})

test('the bin\'s code cache: written once, then used; a bad one is replaced; not used from a directory others may write; off with NBDTS_CODE_CACHE=0', async () => {
  const cacheHome = path.join(dir, 'code-cache')
  const cacheDir = path.join(cacheHome, 'nbdts')
  const run = async (env: NodeJS.ProcessEnv = {}): Promise<void> => {
    const r = await nbdts(['info', '--size', server.uri()], { env: { ...process.env, XDG_CACHE_HOME: cacheHome, ...env } })
    assert.equal(r.code, 0, r.stderr)
    assert.equal(r.stdout, '1048576\n')
  }
  const files = (): string[] => { try { return readdirSync(cacheDir) } catch { return [] } }
  rmSync(cacheHome, { recursive: true, force: true })
  await run({ NBDTS_CODE_CACHE: '0' })
  assert.deepEqual(files(), [])

  await run()
  const [file] = files()
  assert.match(file ?? '', /^info-[0-9a-f]{16}-v[\d.]+-\w+\.v8cache$/)
  const cache = path.join(cacheDir, file!)
  assert.equal(statSync(cacheDir).mode & 0o777, 0o700)
  assert.equal(statSync(cache).mode & 0o777, 0o600)
  const first = statSync(cache)
  await run()
  assert.equal(statSync(cache).ino, first.ino, 'a cache V8 takes is left as it is')

  writeFileSync(cache, 'not a code cache')
  await run()
  assert.ok(statSync(cache).size > 1000, 'a cache V8 refuses is written again')

  // A directory others may write to: not read, not written.
  writeFileSync(cache, 'not a code cache')
  chmodSync(cacheDir, 0o777)
  await run()
  assert.equal(readFileSync(cache, 'utf8'), 'not a code cache')
  chmodSync(cacheDir, 0o700)
})
