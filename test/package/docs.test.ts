/**
 * The documentation keeps up with the code: the README's library section names every public
 * method and property of NbdClient and every error code, and the TypeDoc reference builds
 * without a warning (a broken link or an unexported type in the public API fails here).
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { test } from 'node:test'
import '../helpers/assert.ts'
import { NBD_ERROR_CODES, NbdClient } from '../../src/index.ts'

const root = fileURLToPath(new URL('../..', import.meta.url))
const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8')
const library = readme.slice(readme.indexOf('## Library'), readme.indexOf('## Command line'))

test('the README\'s library section names every public member of NbdClient and every error code', () => {
  const members = [
    ...Object.getOwnPropertyNames(NbdClient.prototype).filter((n) => n !== 'constructor'),
    ...Object.getOwnPropertyNames(NbdClient).filter((n) => !['length', 'name', 'prototype'].includes(n))
  ]
  // EventEmitter's own methods (on, emit, ...) are Node's, not ours.
  const missing = members.filter((n) => !new RegExp(`\`[^\`]*\\b${n}\\b[^\`]*\``).test(library))
  assert.deepEqual(missing, [], 'members of NbdClient the README does not mention')
  assert.deepEqual(NBD_ERROR_CODES.filter((c) => !library.includes(`\`${c}\``)), [], 'error codes the README does not list')
})

test('npm run docs: the TypeDoc reference builds with no warnings', async () => {
  await promisify(execFile)(process.execPath, [`${root}node_modules/typedoc/bin/typedoc`, '--emit', 'none', '--treatWarningsAsErrors'], { cwd: root, timeout: 120_000 })
})
