/**
 * The scene both local-user suites share: a directory root may use (0755), one that belongs to
 * nobody (where nobody plants links), and root-only secrets that must come through untouched.
 */
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { chmodSync, chownSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { tempDir } from '../helpers/servers.ts'

export const NOBODY = Number(spawnSync('id', ['-u', 'nobody'], { encoding: 'utf8' }).stdout.trim())
export const NOGROUP = Number(spawnSync('id', ['-g', 'nobody'], { encoding: 'utf8' }).stdout.trim())

export const SECRET = 'root-only:s3cr3t-value\n'

export interface Scene {
  /** Root's working directory, reachable by nobody. */
  readonly root: string
  /** nobody's own directory. */
  readonly theirs: string
  /** A new root-only secret (mode 0600) per call, so one test's damage cannot hide another's. */
  readonly victim: () => string
}

export function scene (): Scene {
  const root = tempDir()
  chmodSync(root, 0o755)
  const theirs = path.join(root, 'nobody')
  mkdirSync(theirs)
  chownSync(theirs, NOBODY, NOGROUP)
  const secrets = path.join(root, 'secrets')
  mkdirSync(secrets, { mode: 0o700 })
  let n = 0
  const victim = (): string => {
    const file = path.join(secrets, `shadow-${n++}`)
    writeFileSync(file, SECRET, { mode: 0o600 })
    return file
  }
  return { root, theirs, victim }
}

export function assertUntouched (file: string): void {
  assert.equal(readFileSync(file, 'utf8'), SECRET, `${file} was written`)
  assert.equal(statSync(file).mode & 0o777, 0o600, `${file} was chmodded`)
}
