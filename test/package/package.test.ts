/**
 * The package as a user gets it: `npm pack` from a clean copy of the sources (no dist/, so
 * prepack must build), `npm install` of the tarball into a fresh project (from npm's cache:
 * --prefer-offline), then in that project: import (ESM) and require (Node ≥ 20.19's require of
 * ESM), a type check of consumers against the shipped .d.ts with our tsc, a read/write and the
 * streams against nbdkit, the `nbdts` bin — and all of it again without the optional koffi.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { after, before, describe, test } from 'node:test'
import '../helpers/assert.ts'
import { startNbdkit, tempDir, type RunningServer } from '../helpers/servers.ts'

const exec = promisify(execFile)
const root = fileURLToPath(new URL('../..', import.meta.url))
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { name: string, version: string, license: string }
const dir = tempDir('nbdts-pack-')
const consumer = path.join(dir, 'consumer')
let packed: { files: Array<{ path: string }>, filename: string }
let server: RunningServer

async function sh (command: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): Promise<{ stdout: string, stderr: string }> {
  try {
    return await exec(command, args, { cwd, env, timeout: 240_000, maxBuffer: 16 << 20 })
  } catch (err) {
    const e = err as { stdout?: string, stderr?: string, message: string }
    throw new Error(`${command} ${args.join(' ')} failed: ${e.message}\n${e.stdout ?? ''}\n${e.stderr ?? ''}`)
  }
}

/** Runs a script with node inside the consumer project. */
function node (file: string, ...args: string[]): Promise<{ stdout: string, stderr: string }> {
  return sh(process.execPath, [file, ...args], consumer)
}

before(async () => {
  // A clean checkout: the sources and the build config, no dist/; our node_modules for tsc.
  const clean = path.join(dir, 'clean')
  mkdirSync(clean)
  for (const f of ['package.json', 'tsconfig.json', 'tsconfig.build.json', 'README.md', 'LICENSE', 'scripts/bundle-cli.ts']) cpSync(path.join(root, f), path.join(clean, f))
  cpSync(path.join(root, 'src'), path.join(clean, 'src'), { recursive: true })
  symlinkSync(path.join(root, 'node_modules'), path.join(clean, 'node_modules'))
  const out = await sh('npm', ['pack', '--json', '--pack-destination', dir, '--loglevel=error'], clean)
  packed = (JSON.parse(out.stdout) as Array<typeof packed>)[0]!

  mkdirSync(consumer)
  writeFileSync(path.join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true, type: 'module' }))
  await sh('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', path.join(dir, packed.filename)], consumer)
  server = await startNbdkit(dir, ['memory', '4M'])
})
after(async () => { await server?.stop() })

const ESM = `
import { NbdClient, createReadStream, createWriteStream, NbdError, UriError } from 'nbdts'
import { parseNbdUri } from 'nbdts/protocol'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
const uri = process.argv[2]
parseNbdUri(uri)
const client = await NbdClient.connect(uri)
await client.write(Buffer.from('hello from the tarball'), 4096)
const back = (await client.read(4096, 22)).toString()
await pipeline(Readable.from([Buffer.alloc(65536, 7)]), createWriteStream(client, { start: 65536 }))
let streamed = 0
for await (const chunk of createReadStream(client, { start: 65536, end: 131071 })) streamed += chunk.filter((b) => b === 7).length
await client.close()
let code
try { parseNbdUri('http://x') } catch (err) { code = err instanceof UriError && err instanceof NbdError ? err.code : 'wrong class' }
console.log(JSON.stringify({ back, streamed, size: String(client.sizeBigInt), code }))
`

const CJS = `
const nbdts = require('nbdts')
const protocol = require('nbdts/protocol')
console.log(JSON.stringify({ client: typeof nbdts.NbdClient.connect, read: typeof nbdts.createReadStream, uri: protocol.parseNbdUri('nbd://h/e').exportName }))
`

const TYPED_ESM = `
import { NbdClient, createReadStream, type NbdClientOptions, type SparseChunk, type NbdErrorCode } from 'nbdts'
import { parseNbdUri } from 'nbdts/protocol'
const options: NbdClientOptions = { uri: 'nbd://localhost/x', maxInFlight: 8, reconnectDelay: 1000 }
export async function main (): Promise<bigint> {
  const client = await NbdClient.connect(options)
  const buf: Buffer = await client.read(0, 512)
  for await (const chunk of createReadStream(client, { sparse: true })) {
    const c = chunk as SparseChunk
    if (c.zero !== true) buf.set(c.data.subarray(0, 1))
  }
  const code: NbdErrorCode = 'NBD_ERR_SERVER_CHANGED'
  void code
  void parseNbdUri('nbd://h').exportName
  // @ts-expect-error read() takes a length, not a string: the shipped types are real, not any
  await client.read(0, 'x')
  await client.close()
  return client.sizeBigInt
}
`

const TYPED_CJS = `
import nbdts = require('nbdts')
export async function size (uri: string): Promise<bigint> {
  const client = await nbdts.NbdClient.connect(uri)
  await client.close()
  return client.sizeBigInt
}
`

describe('the npm package', () => {
  test('the tarball: built by prepack, what a user needs, no maps or sources, the LICENSE', () => {
    const files = packed.files.map((f) => f.path).sort()
    const bins = ['dist/cli/bin.cjs', 'dist/cli/nbdts.cjs']
    for (const f of ['LICENSE', 'README.md', 'package.json', 'dist/index.js', 'dist/index.d.ts', 'dist/cli/main.js', ...bins, 'dist/protocol/index.js', 'dist/streams/index.d.ts', 'dist/activation/index.js']) {
      assert.ok(files.includes(f), `${f} is shipped`)
    }
    assert.deepEqual(files.filter((f) => !/^dist\/.*\.(js|d\.ts)$/.test(f) && !['LICENSE', 'README.md', 'package.json', ...bins].includes(f)), [])
    assert.equal(pkg.license, 'MIT')
    assert.match(readFileSync(path.join(root, 'LICENSE'), 'utf8'), /^MIT License\n\nCopyright \(c\) \d{4} nbdts contributors\n/)
    const installed = path.join(consumer, 'node_modules', 'nbdts')
    assert.equal(existsSync(path.join(installed, 'src')), false)
    assert.ok(existsSync(path.join(consumer, 'node_modules', 'koffi')), 'koffi comes along as an optional dependency')
  })

  test('import (ESM): read, write and the streams against nbdkit', async () => {
    writeFileSync(path.join(consumer, 'esm.mjs'), ESM)
    const r = await node('esm.mjs', server.uri())
    assert.deepEqual(JSON.parse(r.stdout), { back: 'hello from the tarball', streamed: 65536, size: String(4 << 20), code: 'NBD_ERR_URI' })
  })

  test('require (CJS), through Node 20.19+\'s require of synchronous ES modules', async () => {
    writeFileSync(path.join(consumer, 'cjs.cjs'), CJS)
    const r = await node('cjs.cjs')
    assert.deepEqual(JSON.parse(r.stdout), { client: 'function', read: 'function', uri: 'e' })
  })

  test('consumers (ESM and CJS) type-check against the shipped .d.ts with our tsc', async () => {
    writeFileSync(path.join(consumer, 'typed.ts'), TYPED_ESM)
    writeFileSync(path.join(consumer, 'typed-cjs.cts'), TYPED_CJS)
    writeFileSync(path.join(consumer, 'tsconfig.json'), JSON.stringify({
      compilerOptions: {
        target: 'es2023', module: 'nodenext', moduleResolution: 'nodenext', strict: true, noEmit: true,
        exactOptionalPropertyTypes: true, types: ['node'], typeRoots: [path.join(root, 'node_modules', '@types')]
      },
      files: ['typed.ts', 'typed-cjs.cts']
    }))
    await sh(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', consumer], consumer)
  })

  test('the nbdts bin runs: --version, info from the bundle (twice: the second with its code cache), copy from the modules', async () => {
    const bin = path.join(consumer, 'node_modules', '.bin', 'nbdts')
    const env = { ...process.env, XDG_CACHE_HOME: path.join(consumer, 'cache') }
    assert.equal((await sh(bin, ['--version'], consumer, env)).stdout.trim(), pkg.version)
    for (let run = 0; run < 2; run++) {
      const info = JSON.parse((await sh(bin, ['info', '--json', server.uri()], consumer, env)).stdout) as { exports: Array<Record<string, unknown>> }
      assert.equal(info.exports[0]!['export-size'], 4 << 20)
      assert.equal(readdirSync(path.join(consumer, 'cache', 'nbdts')).length, 1)
    }
    assert.match((await sh(bin, ['copy', '--help'], consumer, env)).stdout, /^Usage: nbdts copy/)
  })

  test('without koffi: the library imports and works, peer credentials say why they are unavailable', async () => {
    rmSync(path.join(consumer, 'node_modules', 'koffi'), { recursive: true, force: true })
    const r = await node('esm.mjs', server.uri())
    assert.equal((JSON.parse(r.stdout) as { back: string }).back, 'hello from the tarball')
    const peer = path.join(consumer, 'node_modules', 'nbdts', 'dist', 'control', 'peer-credentials.js')
    writeFileSync(path.join(consumer, 'peer.mjs'), `
      const { loadPeerCredentials, peerCredentialsError } = await import(${JSON.stringify(peer)})
      console.log(JSON.stringify({ loaded: await loadPeerCredentials(), why: peerCredentialsError() }))`)
    const creds = JSON.parse((await node('peer.mjs')).stdout) as { loaded: boolean, why: string }
    assert.equal(creds.loaded, false)
    assert.match(creds.why, /optional dependency koffi, which is not installed/)
    const bin = path.join(consumer, 'node_modules', '.bin', 'nbdts')
    assert.equal((await sh(bin, ['info', server.uri()], consumer)).stdout.includes('export-size: 4194304'), true)
  })
})
