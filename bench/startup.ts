/**
 * `node --import tsx bench/startup.ts [--runs 15] [--cli PATH] [--baseline PATH]`
 *
 * How long the commands people run in loops take, whole (process start to exit), against
 * `node -e 0` on the same machine: `nbdts --version`, `nbdts info URI` (an nbdkit memory
 * export on a Unix socket) and `nbdts ctl show mounts` (a daemon with no mounts on its own
 * socket), and nbdinfo for scale. The commands take turns, run after run, so a machine whose
 * speed drifts (a shared one) slows each alike; the medians and each command's median ratio
 * to `node -e 0` (of the runs side by side) are printed. Uses the built bin (dist/cli/bin.cjs,
 * as npm installs it), or another build's bin or dist/cli/main.js (--cli); --baseline adds the
 * three commands of another build (its bin or main.js) to the same rounds, for a before/after
 * of one run. The bins' code caches go to a directory of this run's own (XDG_CACHE_HOME), made
 * by the warm-up round.
 */
import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'

const { values } = parseArgs({ options: { runs: { type: 'string', default: '15' }, cli: { type: 'string' }, baseline: { type: 'string' } } })
const runs = Number(values.runs)
const cli = values.cli === undefined ? fileURLToPath(new URL('../dist/cli/bin.cjs', import.meta.url)) : path.resolve(values.cli)
const dir = mkdtempSync(path.join(tmpdir(), 'nbdts-startup-'))
const env = { ...process.env, XDG_CACHE_HOME: path.join(dir, 'cache') }
const nbdSocket = path.join(dir, 'nbd.sock')
const ctlSocket = path.join(dir, 'ctl.sock')
const uri = `nbd+unix:///?socket=${nbdSocket}`

async function waitFor (check: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !check(); i++) await sleep(50)
}

/** Wall time of one run in ms; throws when the command fails. */
function time (argv: readonly string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint()
    const child = spawn(argv[0]!, argv.slice(1), { stdio: 'ignore', env })
    child.on('error', reject)
    child.on('close', (code) => {
      if (code !== 0) reject(new Error(`${argv.join(' ')} exited ${String(code)}`))
      else resolve(Number(process.hrtime.bigint() - started) / 1e6)
    })
  })
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2
}

const nbdkit = spawnSync('nbdkit', ['-U', nbdSocket, '-P', path.join(dir, 'nbdkit.pid'), 'memory', '1G'])
if (nbdkit.status !== 0) throw new Error(`nbdkit: ${nbdkit.stderr.toString()}`)
const daemon = spawn(process.execPath, [cli, 'daemon', '--foreground', '--control-socket', ctlSocket], { stdio: 'ignore' })
try {
  await waitFor(() => spawnSync(process.execPath, [cli, 'ctl', '--socket', ctlSocket, 'show', 'daemon']).status === 0)
  const commands: Record<string, string[]> = {
    'node -e 0': [process.execPath, '-e', '0'],
    'nbdts --version': [process.execPath, cli, '--version'],
    'nbdts info URI': [process.execPath, cli, 'info', uri],
    'nbdts ctl show mounts': [process.execPath, cli, 'ctl', '--socket', ctlSocket, 'show', 'mounts'],
    ...(values.baseline !== undefined && {
      'baseline --version': [process.execPath, path.resolve(values.baseline), '--version'],
      'baseline info URI': [process.execPath, path.resolve(values.baseline), 'info', uri],
      'baseline ctl show mounts': [process.execPath, path.resolve(values.baseline), 'ctl', '--socket', ctlSocket, 'show', 'mounts']
    }),
    'nbdinfo URI': ['nbdinfo', uri]
  }
  const times = new Map(Object.keys(commands).map((name) => [name, [] as number[]]))
  // One warm-up round (page cache), then the rounds that count.
  for (let round = -1; round < runs; round++) {
    for (const [name, argv] of Object.entries(commands)) {
      const ms = await time(argv)
      if (round >= 0) times.get(name)!.push(ms)
    }
  }
  const base = times.get('node -e 0')!
  console.log(`${runs} runs each, in turn; wall ms (median, min-max); ratio: median of run-by-run ratios to node -e 0`)
  for (const [name, xs] of times) {
    const ratio = median(xs.map((x, i) => x / base[i]!))
    console.log(`${name.padEnd(24)} ${median(xs).toFixed(0).padStart(5)}  (${Math.min(...xs).toFixed(0)}-${Math.max(...xs).toFixed(0)})  ${ratio.toFixed(2)}x`)
  }
} finally {
  daemon.kill('SIGTERM')
  spawnSync('sh', ['-c', `kill $(cat ${path.join(dir, 'nbdkit.pid')})`])
  await sleep(200)
  rmSync(dir, { recursive: true, force: true })
}
