import { spawn } from 'node:child_process'

export interface ProcResult {
  readonly stdout: string
  readonly stderr: string
}

/** Runs a command to completion with a hard time limit; rejects on failure with its stderr. */
export function runProc (command: string, args: readonly string[], timeoutMs: number): Promise<ProcResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
    const timer = setTimeout(() => { child.kill('SIGKILL') }, timeoutMs)
    child.on('error', reject)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      if (code !== 0) reject(new Error(`${command} ${args.join(' ')} → ${code ?? signal}: ${stderr.slice(-2000)}`))
      else resolve({ stdout, stderr })
    })
  })
}
