/**
 * The documentation keeps up with the code: the library's pages (docs/library.md, with
 * guarantees.md and multipath.md) name every public method and property of NbdClient and every
 * error code, every relative link in the README and docs/ leads to a file that exists, and the
 * TypeDoc reference builds without a warning (a broken link or an unexported type in the public
 * API fails here).
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { test } from 'node:test'
import '../helpers/assert.ts'
import { NBD_ERROR_CODES, NbdClient } from '../../src/index.ts'

const root = fileURLToPath(new URL('../..', import.meta.url))
const library = ['library.md', 'guarantees.md', 'multipath.md'].map((f) => readFileSync(path.join(root, 'docs', f), 'utf8')).join('\n')

test('the library\'s pages name every public member of NbdClient and every error code', () => {
  const members = [
    ...Object.getOwnPropertyNames(NbdClient.prototype).filter((n) => n !== 'constructor'),
    ...Object.getOwnPropertyNames(NbdClient).filter((n) => !['length', 'name', 'prototype'].includes(n))
  ]
  // EventEmitter's own methods (on, emit, ...) are Node's, not ours.
  const missing = members.filter((n) => !new RegExp(`\`[^\`]*\\b${n}\\b[^\`]*\``).test(library))
  assert.deepEqual(missing, [], 'members of NbdClient the README does not mention')
  assert.deepEqual(NBD_ERROR_CODES.filter((c) => !library.includes(`\`${c}\``)), [], 'error codes the README does not list')
})

test('every relative link in the README and docs/*.md leads to a file', () => {
  const pages = ['README.md', ...readdirSync(path.join(root, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)]
  const broken: string[] = []
  for (const page of pages) {
    for (const [, target] of readFileSync(path.join(root, page), 'utf8').matchAll(/\]\(([^)#\s]+)(?:#[^)]*)?\)/g)) {
      if (/^[a-z]+:/.test(target!)) continue
      if (!existsSync(path.join(root, path.dirname(page), target!))) broken.push(`${page} -> ${target!}`)
    }
  }
  assert.ok(pages.length > 5, 'the docs pages are there')
  assert.deepEqual(broken, [])
})

test('npm run docs: the TypeDoc reference builds with no warnings', async () => {
  await promisify(execFile)(process.execPath, [`${root}node_modules/typedoc/bin/typedoc`, '--emit', 'none', '--treatWarningsAsErrors'], { cwd: root, timeout: 120_000 })
})
