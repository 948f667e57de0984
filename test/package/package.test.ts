/**
 * The package as a user gets it: `npm pack` from a clean copy of the sources (no dist/, so
 * prepack must build), `npm install` of the tarball into a fresh project (from npm's cache:
 * --prefer-offline), then in that project: import (ESM) and require (Node ≥ 20.19's require of
 * ESM), a type check of consumers against the shipped .d.ts with our tsc, a read/write and the
 * streams against nbdkit, the `nbdts` bin — and all of it again without the optional koffi.
 * SURFACE lists every exported name: the tests check it from ESM, CJS and the .d.ts, so a new
 * export (or a removed one) fails here until it is listed (and used in USE where it runs).
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

/**
 * Every name each entry point exports, with what it is at run time ('type': a type only). A name
 * the package exports and this list does not have (or the other way round) fails the tests
 * below, from ESM, from CJS and from the .d.ts: a new export comes with its line here.
 */
type Kind = 'function' | 'object' | 'number' | 'bigint' | 'type'
const fn = (names: string): Record<string, Kind> => Object.fromEntries(names.split(/\s+/).filter(Boolean).map((n) => [n, 'function' as Kind]))
const of = (kind: Kind, names: string): Record<string, Kind> => Object.fromEntries(names.split(/\s+/).filter(Boolean).map((n) => [n, kind]))
const ERRORS = `NbdError ProtocolError HandshakeError ServerError ConnectionError TimeoutError ReconnectDelayError ServerChangedError
  NotSupportedError InvalidArgumentError ClosedError TlsError UriError DurabilityError InDoubtError OffsetRangeError AbortedError MountError`
const SURFACE: Record<'nbdts' | 'nbdts/protocol', Record<string, Kind>> = {
  nbdts: {
    ...fn(`NbdClient createReadStream createWriteStream parseNbdUri formatNbdUri startServerCommand ${ERRORS}`),
    ...of('object', 'NBD_CLIENT_STATE NBD_ERROR_CODES'),
    ...of('number', 'NBD_STATE_HOLE NBD_STATE_ZERO NBD_STATE_DIRTY'),
    ...of('type', `BlockStatus BlockStatusOptions ConnectionInfo ExportInfo Extent ListedExport MapOptions NbdClientOptions NbdClientState
      Offset RequestInfo RequestOptions RequestsInFlightOptions StateChange WriteOptions ZeroOptions BlockSizeConstraints BackoffOptions
      StatsSnapshot OpenSocket TlsMode NbdAddress NbdUri DataChunk ReadStreamOptions SparseChunk WriteStreamOptions ZeroChunk ExitStatus
      ServerCommand ServerCommandOptions NbdErrorCode NbdErrno MountErrorReason Failback PathChange PathIdentity PathSelector PathState
      PathStatus`)
  },
  'nbdts/protocol': {
    ...fn(`ReadAssembly checkBlockSize chunkTypeName classifyChunk commandName decodeString encodeClientFlags encodeExportNameRequest
      encodeInfoRequest encodeMetaContextRequest encodeOptionRequest encodeRequest encodeString errnoFromNbd formatNbdUri isErrorReply
      optionName parseBlockStatus parseErrorChunk parseExportNameReply parseGreetingPrefix parseHandshakeFlags parseInfoReply
      parseMetaContextReply parseNbdUri parseOffsetHole parseOptionError parseOptionReplyHeader parseReplyHeader parseServerReply
      replyHeaderSize replyName requestHeaderSize usableTransmissionFlags
      NbdError ProtocolError HandshakeError ServerError InvalidArgumentError UriError`),
    ...of('bigint', 'NBD_CLISERV_MAGIC NBD_INIT_MAGIC NBD_OPTS_MAGIC NBD_REP_MAGIC'),
    ...of('object', 'NBD_CMD NBD_CMD_FLAG NBD_ERRNO NBD_ERROR_CODES NBD_FLAG NBD_INFO NBD_OPT NBD_REP NBD_REPLY_TYPE'),
    ...of('number', `NBD_DEFAULT_MAX_PAYLOAD NBD_DEFAULT_PORT NBD_ESHUTDOWN NBD_EXPORT_NAME_REPLY NBD_EXPORT_NAME_ZEROES
      NBD_EXTENDED_REPLY_HEADER NBD_EXTENDED_REPLY_MAGIC NBD_EXTENDED_REQUEST_HEADER NBD_EXTENDED_REQUEST_MAGIC NBD_FLAG_C_FIXED_NEWSTYLE
      NBD_FLAG_C_NO_ZEROES NBD_FLAG_FIXED_NEWSTYLE NBD_FLAG_NO_ZEROES NBD_GREETING_PREFIX NBD_MAX_EXTENTS NBD_MAX_STRING NBD_OLDSTYLE_REST
      NBD_OPTION_HEADER NBD_OPTION_REPLY_HEADER NBD_REPLY_FLAG_DONE NBD_REPLY_TYPE_ERROR_BIT NBD_REP_FLAG_ERROR NBD_REQUEST_HEADER
      NBD_REQUEST_MAGIC NBD_SIMPLE_REPLY_HEADER NBD_SIMPLE_REPLY_MAGIC NBD_STATE_DIRTY NBD_STATE_HOLE NBD_STATE_ZERO
      NBD_STRUCTURED_REPLY_HEADER NBD_STRUCTURED_REPLY_MAGIC`),
    ...of('type', `NbdOpt NbdCmd GreetingStyle HandshakeFlags OptionReplyHeader OptionError BlockSizeConstraints InfoReply ExportListing
      MetaContextReply ExportNameReply ReplyMode ReplyHeader ChunkKind ErrorChunk HoleChunk Extent StatusChunk TlsMode TlsType NbdAddress
      NbdUri NbdErrorCode NbdErrno`)
  }
}
const values = (entry: keyof typeof SURFACE): Record<string, Kind> =>
  Object.fromEntries(Object.entries(SURFACE[entry]).filter(([, kind]) => kind !== 'type').sort(([a], [b]) => a < b ? -1 : 1))

/** Prints { entry: { name: typeof } } for both entry points, loaded with `load`. */
const LIST = (load: string): string => `
const out = {}
for (const entry of ['nbdts', 'nbdts/protocol']) {
  const m = ${load}
  out[entry] = Object.fromEntries(Object.keys(m).filter((k) => k !== 'default' && k !== '__esModule' && k !== 'module.exports').sort().map((k) => [k, typeof m[k]]))
}
console.log(JSON.stringify(out))
`

/** Uses every run-time name of 'nbdts' (the errors: made, and told apart by code) against a server. */
const USE = (load: string): string => `
const nbdts = ${load}
const { NbdClient, NbdError, NBD_ERROR_CODES, NBD_CLIENT_STATE, NBD_STATE_HOLE, NBD_STATE_ZERO, NBD_STATE_DIRTY } = nbdts
const uri = process.argv[2]
const out = {}
const parsed = nbdts.parseNbdUri(uri)
out.uri = nbdts.formatNbdUri(parsed.address, parsed.exportName) === uri
const client = await NbdClient.connect(uri)
await client.write(Buffer.from('hello from the tarball'), 4096)
out.back = (await client.read(22, 4096)).toString()
await client.writeZeroes(65536, 1 << 20)
const status = await client.blockStatus(65536, 1 << 20)
out.zero = (status.get('base:allocation')[0].flags & NBD_STATE_ZERO) !== 0
const extents = []
for await (const e of client.map(8192, 0)) extents.push([e.offset, e.length, (e.flags & NBD_STATE_HOLE) !== 0])
out.map = extents
out.dirtyBit = NBD_STATE_DIRTY
out.sizes = [client.size, client.info.size, client.sizeBigInt === BigInt(client.size)]
out.states = [client.state, client.states(), NBD_CLIENT_STATE.CONNECTED]
out.stats = client.stats().requests.read > 0
out.requests = client.requestsInFlight()
const { pipeline } = await import('node:stream/promises')
const { Readable } = await import('node:stream')
await pipeline(Readable.from([Buffer.alloc(65536, 7)]), nbdts.createWriteStream(client, { start: 131072 }))
let streamed = 0
for await (const chunk of nbdts.createReadStream(client, { start: 131072, end: 196607 })) streamed += chunk.filter((b) => b === 7).length
out.streamed = streamed
const states = []
client.on('state', (c) => states.push(c.to))
await client.close()
out.closeStates = states
// A server of our own for one connection (socket activation).
const server = await nbdts.startServerCommand(['nbdkit', 'memory', '1M'])
const second = await NbdClient.connect({ uri: server.uri, open: server.open })
out.activated = second.size
await second.close()
await server.stop()
// Every error class: an NbdError whose code is one of NBD_ERROR_CODES (ABORT_ERR aside).
const errors = {}
for (const name of Object.keys(nbdts).filter((k) => k.endsWith('Error')).sort()) {
  const E = nbdts[name]
  const err = name === 'NbdError' ? new E('NBD_ERR_PROTOCOL', 'x') : name === 'ServerError' ? new E('EIO', 5, 'x') : name === 'MountError' ? new E('busy', 'x') : name === 'AbortedError' ? new E() : new E('x')
  errors[name] = err instanceof NbdError && (NBD_ERROR_CODES.includes(err.code) || err.code === 'ABORT_ERR') ? err.code : 'not an NbdError'
}
out.errors = errors
try { nbdts.parseNbdUri('http://x') } catch (err) { out.uriError = err instanceof nbdts.UriError ? err.code : 'wrong class' }
console.log(JSON.stringify(out))
`

/** What USE prints, the same from ESM and from CJS. */
const USED = {
  uri: true,
  back: 'hello from the tarball',
  zero: true,
  map: [[0, 8192, false]],
  dirtyBit: 1,
  sizes: [4 << 20, 4 << 20, true],
  states: ['CONNECTED', ['CONNECTED'], 'CONNECTED'],
  stats: true,
  requests: [],
  streamed: 65536,
  closeStates: ['QUIT'],
  activated: 1 << 20,
  errors: {
    AbortedError: 'ABORT_ERR', ClosedError: 'NBD_ERR_CLOSED', ConnectionError: 'NBD_ERR_CONNECTION', DurabilityError: 'NBD_ERR_DURABILITY',
    HandshakeError: 'NBD_ERR_HANDSHAKE', InDoubtError: 'NBD_ERR_IN_DOUBT', InvalidArgumentError: 'NBD_ERR_INVALID_ARGUMENT',
    MountError: 'NBD_ERR_MOUNT', NbdError: 'NBD_ERR_PROTOCOL', NotSupportedError: 'NBD_ERR_NOT_SUPPORTED', OffsetRangeError: 'NBD_ERR_RANGE',
    ProtocolError: 'NBD_ERR_PROTOCOL', ReconnectDelayError: 'NBD_ERR_RECONNECT_DELAY', ServerChangedError: 'NBD_ERR_SERVER_CHANGED',
    ServerError: 'NBD_ERR_SERVER', TimeoutError: 'NBD_ERR_TIMEOUT', TlsError: 'NBD_ERR_TLS', UriError: 'NBD_ERR_URI'
  },
  uriError: 'NBD_ERR_URI'
}

/** Uses the codec of 'nbdts/protocol': a request header encoded and a reply header parsed. */
const USE_PROTOCOL = (load: string): string => `
const p = ${load}
const header = Buffer.alloc(p.requestHeaderSize(false))
p.encodeRequest(header, 0, p.NBD_CMD.READ, 7, 4096n, 512, false)
const reply = Buffer.alloc(p.replyHeaderSize(p.NBD_SIMPLE_REPLY_MAGIC, 'structured'))
reply.writeUInt32BE(p.NBD_SIMPLE_REPLY_MAGIC, 0)
reply.writeBigUInt64BE(7n, 8)
const parsed = p.parseReplyHeader(reply)
console.log(JSON.stringify({ magic: header.readUInt32BE(0) === p.NBD_REQUEST_MAGIC, type: p.commandName(header.readUInt16BE(6)), cookie: String(parsed.cookie) }))
`

/**
 * With TypeScript's checker, over the installed .d.ts: what each entry point exports (values and
 * types), and every named type reachable from those exports that is not itself exported (a
 * user would meet a type they cannot name: ReturnType<EnginePool['requests']>, an internal
 * class). Prints { exports, unnamed }.
 */
const SURFACE_CHECK = `
const ts = require(process.argv[2])
const path = require('node:path')
const options = { module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, target: ts.ScriptTarget.ES2023,
  strict: true, noEmit: true, types: ['node'], typeRoots: [process.argv[3]] }
const program = ts.createProgram([path.resolve('surface-entry.ts')], options)
const checker = program.getTypeChecker()
const entry = program.getSourceFile(path.resolve('surface-entry.ts'))
const ours = (decl) => decl.getSourceFile().fileName.includes('/node_modules/nbdts/')
const resolve = (s) => (s.flags & ts.SymbolFlags.Alias) ? checker.getAliasedSymbol(s) : s
const exported = new Set()
const listed = {}
const roots = []
for (const statement of entry.statements) {
  if (!ts.isImportDeclaration(statement)) continue
  const module = checker.getSymbolAtLocation(statement.moduleSpecifier)
  const names = []
  for (const s of checker.getExportsOfModule(module)) {
    names.push(s.name)
    const target = resolve(s)
    exported.add(target)
    roots.push(target)
  }
  listed[statement.moduleSpecifier.text] = names.sort()
}
const unnamed = new Set()
const seen = new Set()
function visitSymbol (symbol) {
  if (seen.has(symbol)) return
  seen.add(symbol)
  for (const decl of symbol.declarations ?? []) if (ours(decl)) visitNode(decl)
}
function visitNode (node) {
  // What a user cannot reach is not part of the surface: private members, bodies.
  if (node.modifiers?.some((m) => m.kind === ts.SyntaxKind.PrivateKeyword) || (node.name && ts.isPrivateIdentifier(node.name))) return
  if (ts.isTypeReferenceNode(node) || ts.isExpressionWithTypeArguments(node) || ts.isTypeQueryNode(node)) {
    const name = ts.isTypeReferenceNode(node) ? node.typeName : ts.isTypeQueryNode(node) ? node.exprName : node.expression
    const at = checker.getSymbolAtLocation(ts.isQualifiedName(name) ? name.right : name)
    if (at !== undefined) {
      const target = resolve(at)
      const decls = target.declarations ?? []
      if (decls.length > 0 && decls.every(ours) && !exported.has(target) &&
          decls.some((d) => ts.isInterfaceDeclaration(d) || ts.isTypeAliasDeclaration(d) || ts.isClassDeclaration(d) || ts.isEnumDeclaration(d) || ts.isVariableDeclaration(d))) {
        unnamed.add(target.name + ' (' + path.relative(path.resolve('node_modules/nbdts'), decls[0].getSourceFile().fileName) + ')')
      }
      if (decls.some(ours)) visitSymbol(target)
    }
  }
  ts.forEachChild(node, visitNode)
}
for (const root of roots) visitSymbol(root)
console.log(JSON.stringify({ exports: listed, unnamed: [...unnamed].sort() }))
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

  test('every exported name, from ESM (import): each entry point exports exactly its list, each name what it should be', async () => {
    writeFileSync(path.join(consumer, 'list.mjs'), LIST('await import(entry)'))
    const listed = JSON.parse((await node('list.mjs')).stdout) as Record<string, Record<string, string>>
    assert.deepEqual(listed, { nbdts: values('nbdts'), 'nbdts/protocol': values('nbdts/protocol') })
  })

  test('every exported name, from CJS (require, Node 20.19+\'s require of ES modules): the same', async () => {
    writeFileSync(path.join(consumer, 'list.cjs'), LIST('require(entry)'))
    const listed = JSON.parse((await node('list.cjs')).stdout) as Record<string, Record<string, string>>
    assert.deepEqual(listed, { nbdts: values('nbdts'), 'nbdts/protocol': values('nbdts/protocol') })
  })

  test('import (ESM): every run-time name of nbdts used against nbdkit, in the one argument order and number model', async () => {
    writeFileSync(path.join(consumer, 'use.mjs'), USE("await import('nbdts')"))
    assert.deepEqual(JSON.parse((await node('use.mjs', server.uri())).stdout), USED)
    writeFileSync(path.join(consumer, 'protocol.mjs'), USE_PROTOCOL("await import('nbdts/protocol')"))
    assert.deepEqual(JSON.parse((await node('protocol.mjs')).stdout), { magic: true, type: 'NBD_CMD_READ', cookie: '7' })
  })

  test('require (CJS): the same, from a CommonJS module', async () => {
    writeFileSync(path.join(consumer, 'use.cjs'), `(async () => {\n${USE("require('nbdts')")}\n})().catch((err) => { console.error(err); process.exit(1) })`)
    assert.deepEqual(JSON.parse((await node('use.cjs', server.uri())).stdout), USED)
    writeFileSync(path.join(consumer, 'protocol.cjs'), USE_PROTOCOL("require('nbdts/protocol')"))
    assert.deepEqual(JSON.parse((await node('protocol.cjs')).stdout), { magic: true, type: 'NBD_CMD_READ', cookie: '7' })
  })

  test('the .d.ts: each entry point exports exactly its list (values and types), and no type a user meets lacks a name to import', async () => {
    writeFileSync(path.join(consumer, 'surface-entry.ts'), "import * as root from 'nbdts'\nimport * as protocol from 'nbdts/protocol'\nexport { root, protocol }\n")
    writeFileSync(path.join(consumer, 'surface.cjs'), SURFACE_CHECK)
    const r = await node('surface.cjs', path.join(root, 'node_modules', 'typescript'), path.join(root, 'node_modules', '@types'))
    const { exports, unnamed } = JSON.parse(r.stdout) as { exports: Record<string, string[]>, unnamed: string[] }
    const names = (entry: keyof typeof SURFACE): string[] => Object.keys(SURFACE[entry]).sort()
    assert.deepEqual(exports, { nbdts: names('nbdts'), 'nbdts/protocol': names('nbdts/protocol') })
    assert.deepEqual(unnamed, [], 'types reachable from the public API that it does not export')
  })

  test('consumers (ESM and CJS) type-check against the shipped .d.ts with our tsc: every exported name, and the argument order', async () => {
    const uses = (entry: keyof typeof SURFACE, ns: string): string => Object.entries(SURFACE[entry])
      .map(([name, kind], i) => kind === 'type' ? `export type T${i} = ${ns}.${name}` : `export const v${i} = ${ns}.${name}`).join('\n')
    writeFileSync(path.join(consumer, 'typed.ts'), `
import * as nbdts from 'nbdts'
import * as protocol from 'nbdts/protocol'
import { NbdClient, NBD_STATE_ZERO, type ExportInfo, type StateChange, type RequestInfo, type Extent } from 'nbdts'
${uses('nbdts', 'nbdts')}
${uses('nbdts/protocol', 'protocol').replace(/ (T|v)(\d+) =/g, ' $1p$2 =')}
export async function main (uri: string): Promise<number> {
  const client = await NbdClient.connect({ uri, maxInFlight: 8, reconnectDelay: 1000 })
  const buf: Buffer = await client.read(512, 0)
  await client.readInto(buf, 1n << 40n)
  await client.write(buf, 0, { fua: true })
  await client.trim(4096, 0)
  await client.writeZeroes(4096, 0, { noHole: true })
  await client.punchHole(4096, 0)
  await client.cache(4096, 0)
  const status: Map<string, Extent[]> = await client.blockStatus(4096, 0)
  const exact: Map<string, Array<Extent<bigint>>> = await client.blockStatus(4096, 0n, { bigint: true })
  for await (const e of client.map(undefined, 0)) if ((e.flags & NBD_STATE_ZERO) !== 0) void e.offset.toFixed()
  const info: ExportInfo = client.info
  const size: number = info.size + client.size
  const big: bigint = info.sizeBigInt + client.sizeBigInt
  const requests: RequestInfo[] = client.requestsInFlight()
  const on = (c: StateChange): number => c.connection
  client.on('state', on)
  void [status, exact, big, requests, client.stats().bytesRead, client.states()]
  // @ts-expect-error read() takes a length first, then the offset: not a string
  await client.read('x', 0)
  await client.close()
  return size
}
`)
    writeFileSync(path.join(consumer, 'typed-cjs.cts'), `
import nbdts = require('nbdts')
import protocol = require('nbdts/protocol')
${uses('nbdts', 'nbdts')}
${uses('nbdts/protocol', 'protocol').replace(/ (T|v)(\d+) =/g, ' $1p$2 =')}
export async function size (uri: string): Promise<number> {
  const client = await nbdts.NbdClient.connect(uri)
  await client.close()
  return client.info.size
}
`)
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
    const r = await node('use.mjs', server.uri())
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
