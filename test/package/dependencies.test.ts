/**
 * The package's dependencies say what the code does: every runtime dependency is imported by
 * src/ and every package src/ imports is declared (Node's own modules aside), so `npm ls
 * --omit=dev` lists exactly what the code uses. And the library entry point loads none of the
 * command's dependencies (commander, the daemon's prom-client and smol-toml, copy's bar), and
 * exports only the API (not errors.ts's helpers).
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { test } from 'node:test'

const root = fileURLToPath(new URL('../..', import.meta.url))
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { dependencies?: Record<string, string>, optionalDependencies?: Record<string, string> }

function sources (dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const file = path.join(dir, name)
    return statSync(file).isDirectory() ? sources(file) : file.endsWith('.ts') ? [file] : []
  })
}

/** The packages a file imports: static and dynamic imports, and createRequire(...)('x'). */
function importedPackages (text: string): string[] {
  const specifiers = [...text.matchAll(/(?:^import\s[^'"]*?from\s+|^export\s[^'"]*?from\s+|\bimport\(|\)\()\s*'([^'.][^']*)'/gm)].map((m) => m[1]!)
  return specifiers.filter((s) => !s.startsWith('node:')).map((s) => s.startsWith('@') ? s.split('/').slice(0, 2).join('/') : s.split('/')[0]!)
}

test('every runtime dependency is imported by src/, and every package src/ imports is declared', () => {
  const imported = new Set(sources(path.join(root, 'src')).flatMap((f) => importedPackages(readFileSync(f, 'utf8'))))
  const declared = new Set(Object.keys({ ...pkg.dependencies, ...pkg.optionalDependencies }))
  assert.ok(imported.has('commander') && imported.has('koffi'), 'the scan finds static imports and createRequire')
  assert.deepEqual([...declared].filter((d) => !imported.has(d)).sort(), [], 'declared but never imported')
  assert.deepEqual([...imported].filter((i) => !declared.has(i)).sort(), [], 'imported but not declared')
})

test('import \'nbdts\' loads none of the command\'s dependencies', async () => {
  const hook = fileURLToPath(new URL('../helpers/record-imports.mjs', import.meta.url))
  const record = path.join(mkdtempSync(path.join(tmpdir(), 'nbdts-deps-')), 'imports.txt')
  await promisify(execFile)(process.execPath, ['--import', hook, '-e', `await import(${JSON.stringify(path.join(root, 'dist/index.js'))})`, '--input-type=module'],
    { env: { ...process.env, NBDTS_RECORD_IMPORTS: record } })
  const packages = new Set(readFileSync(record, 'utf8').split('\n').flatMap((l) => /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(l)?.[1] ?? []))
  assert.deepEqual([...packages].sort(), ['async-mutex'])
})

test('the nbdts entry point exports the API and nothing the package keeps for itself', async () => {
  const api = await import('../../src/index.ts')
  assert.deepEqual(Object.keys(api).sort(), [
    'AbortedError', 'ClosedError', 'ConnectionError', 'DurabilityError', 'HandshakeError', 'InDoubtError', 'InvalidArgumentError',
    'MountError', 'NBD_CLIENT_STATE', 'NBD_ERROR_CODES', 'NBD_STATE_DIRTY', 'NBD_STATE_HOLE', 'NBD_STATE_ZERO', 'NbdClient', 'NbdError',
    'NotSupportedError', 'OffsetRangeError', 'ProtocolError', 'ReconnectDelayError', 'ServerChangedError', 'ServerError', 'TimeoutError',
    'TlsError', 'UriError', 'createReadStream', 'createWriteStream', 'formatNbdUri', 'parseNbdUri', 'startServerCommand'
  ])
})
