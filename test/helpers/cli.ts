import { spawn, spawnSync } from 'node:child_process'
import { cpSync, existsSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

/** The built CLI, as users run it (npm test builds dist/ first). */
export const CLI = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url))

export interface CliResult {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

export function nbdts (args: string[], options: { timeoutMs?: number, env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? process.env })
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
