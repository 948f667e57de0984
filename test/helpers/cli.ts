import { spawn, spawnSync } from 'node:child_process'
import { cpSync, existsSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

/** The built CLI's modules (npm test builds dist/ first): every command, no bundle, no code cache. */
export const CLI = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url))

/**
 * The bin, as npm installs it (package.json's "bin"): `info`, `ctl` and `--version` from the
 * bundle with its code cache (copy too, since issue 26), the other commands from CLI.
 */
export const BIN = fileURLToPath(new URL('../../dist/cli/bin.cjs', import.meta.url))

/** The bin's code caches during the tests: not the user's ~/.cache. */
export const TEST_CODE_CACHE = path.join(tmpdir(), `nbdts-test-cache-${process.getuid?.() ?? 'user'}`)

export interface CliResult {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/** Runs the bin, as a user does. */
export function nbdts (args: string[], options: { timeoutMs?: number, env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const env = { ...(options.env ?? process.env), XDG_CACHE_HOME: options.env?.XDG_CACHE_HOME ?? TEST_CODE_CACHE }
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
    const timer = setTimeout(() => { child.kill('SIGKILL') }, options.timeoutMs ?? 30_000)
    child.on('error', reject)
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }) })
  })
}

/**
 * The built package where an unprivileged user can run it: the checkout itself when `user` can
 * read it, else a copy of dist/ and the runtime dependencies under `dir` (a fresh clone often
 * sits below a 0700 directory such as /root or a mktemp -d). Returns the package root.
 */
export function packageFor (user: string, dir: string): string {
  const root = fileURLToPath(new URL('../..', import.meta.url))
  if (spawnSync('setpriv', [`--reuid=${user}`, '--clear-groups', 'test', '-r', CLI]).status === 0) return root
  const copy = path.join(dir, 'package')
  cpSync(path.join(root, 'package.json'), path.join(copy, 'package.json'))
  cpSync(path.join(root, 'dist'), path.join(copy, 'dist'), { recursive: true })
  // The runtime dependencies, and theirs: what npm would install for a user of the package.
  const wanted = [root]
  const seen = new Set<string>()
  while (wanted.length > 0) {
    const pkg = JSON.parse(readFileSync(path.join(wanted.pop()!, 'package.json'), 'utf8')) as { dependencies?: Record<string, string>, optionalDependencies?: Record<string, string> }
    for (const name of Object.keys({ ...pkg.dependencies, ...pkg.optionalDependencies })) {
      const from = path.join(root, 'node_modules', name)
      if (seen.has(name) || !existsSync(from)) continue
      seen.add(name)
      cpSync(from, path.join(copy, 'node_modules', name), { recursive: true })
      wanted.push(from)
    }
  }
  return copy
}
