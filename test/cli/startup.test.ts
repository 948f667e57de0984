/**
 * Each command loads only its own code: `--version` no client, `info` no daemon, metrics or
 * FUSE, `ctl` (run in loops by admins and scripts) only the control socket's client. What a
 * command imports is most of its start-up time (bench/README.md has the figures), so a static
 * import that pulls a heavy module back in fails here.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { readFileSync, rmSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { after, before, test } from 'node:test'
import '../helpers/assert.ts'
import { CLI, nbdts } from '../helpers/cli.ts'
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

/** Runs the built CLI; returns its exit code and the modules it loaded, relative to the package. */
async function imports (args: string[]): Promise<{ code: number | null, loaded: string[] }> {
  const record = path.join(dir, `imports-${args[0]}.txt`)
  rmSync(record, { force: true })
  const code = await new Promise<number | null>((resolve, reject) => {
    spawn(process.execPath, ['--import', hook, CLI, ...args], { stdio: 'ignore', env: { ...process.env, NBDTS_RECORD_IMPORTS: record } })
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
