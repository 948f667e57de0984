/**
 * `node --import tsx scripts/bundle-cli.ts` (the second half of `npm run build`): the CLI's
 * quick commands (`info`, `ctl`) and `copy` as one CommonJS file, dist/cli/nbdts.cjs, which
 * the bin (src/cli/bin.cts) compiles with a V8 code cache. On Node 20 a command's start-up is
 * mostly the resolving, reading and compiling of its ES modules, ~1.5 ms each (~80 for `info`),
 * and nothing caches the compile (module.enableCompileCache() is Node ≥ 22.1): one file with a
 * code cache brings `info` within 1.5× of `node -e 0` (bench/README.md has the figures).
 *
 * What the bundle holds: src/cli/main.ts and what those commands import (the client,
 * connector, protocol, transport, the control socket's client, the copier, commander,
 * async-mutex). `copy` is in because it is timed whole against nbdcopy: the bundle with its code
 * cache takes ~0.11 s off each run (bench/README.md), and adds 20 KiB to the bundle. The
 * long-running commands (mount, daemon) are left out: the bin runs them from the modules
 * tsc built (dist/cli/main.js), as before, so their imports stand in for nothing here; should
 * the bundle ever reach one, it throws. The bundle's first line carries a hash of the rest, the
 * key of its code caches; the licences of the packages inlined are appended. The modules it
 * holds are listed in dist/cli/nbdts.modules.txt (for test/cli/startup.test.ts; not packed).
 */
import { createHash } from 'node:crypto'
import { chmodSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { build, type Plugin } from 'esbuild'

const root = fileURLToPath(new URL('..', import.meta.url))
const out = path.join(root, 'dist/cli/nbdts.cjs')
const list = path.join(root, 'dist/cli/nbdts.modules.txt')

/** The modules only the long-running commands import: importer (relative to root) → specifiers. */
const LEFT_OUT: Readonly<Record<string, readonly string[]>> = {
  'src/cli/main.ts': ['./mount.ts', './daemon.ts']
}
/** Packages resolved at run time, not inlined: koffi is native; cli-progress only copy's progress bar loads; the rest only the left-out code uses. */
const EXTERNAL = ['koffi', 'prom-client', 'smol-toml', 'cli-progress']

const leaveOut: Plugin = {
  name: 'leave-out',
  setup (b) {
    b.onResolve({ filter: /^\.\.?\// }, (args) => {
      const importer = path.relative(root, args.importer)
      return LEFT_OUT[importer]?.includes(args.path) === true ? { path: `${importer} → ${args.path}`, namespace: 'left-out' } : undefined
    })
    b.onLoad({ filter: /.*/, namespace: 'left-out' }, (args) => ({
      contents: `throw new Error(${JSON.stringify(`internal: ${args.path} is not in the bundle (bin.cts runs that command from main.js)`)})`,
      loader: 'js'
    }))
  }
}

/**
 * commander requires node:child_process at its top, for executable subcommands, which nbdts has
 * none of: loading it (with the dgram, socket-list and stream code it pulls in) was ~7 ms of each
 * `info` and `copy`. commander gets a stand-in that loads it on first use.
 */
const lazyChildProcess: Plugin = {
  name: 'lazy-child-process',
  setup (b) {
    b.onResolve({ filter: /^node:child_process$/ }, (args) =>
      /node_modules\/commander\//.test(args.importer) ? { path: 'node:child_process', namespace: 'lazy-builtin' } : undefined)
    b.onLoad({ filter: /.*/, namespace: 'lazy-builtin' }, (args) => ({
      contents: `let real; module.exports = new Proxy({}, { get: (_, key) => (real ??= require(${JSON.stringify(args.path)}))[key] })`,
      loader: 'js'
    }))
  }
}

const result = await build({
  entryPoints: [path.join(root, 'src/cli/main.ts')],
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  // import() as require(): a vm.Script has no loader for import() (ctl's node:readline).
  supported: { 'dynamic-import': false },
  write: false,
  outfile: out,
  external: EXTERNAL,
  // import.meta.url in a CommonJS file: the bundle's own URL (main.ts finds package.json from it,
  // libc.ts requires koffi from it), made when first asked for.
  define: { 'import.meta.url': '__bundle.url' },
  banner: { js: 'const __bundle = { get url () { return require(\'node:url\').pathToFileURL(__filename).href } };' },
  plugins: [leaveOut, lazyChildProcess],
  // Whitespace only (names stay, for stack traces): a third less to read at each start, ~18 ms
  // of `info`'s CPU time (bench/README.md); renaming saves nothing more.
  minifyWhitespace: true,
  metafile: true,
  logLevel: 'warning'
})

const body = result.outputFiles[0]!.text.replace(/^#!.*\n/, '')
const packages = [...new Set(Object.keys(result.metafile.inputs)
  .map((input) => /(?:^|\/)node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(input)?.[1])
  .filter((name) => name !== undefined))].sort()
const licences = packages.map((name) => {
  const dir = path.join(root, 'node_modules', name)
  const { version, license } = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as { version: string, license: string }
  let text = ''
  for (const file of ['LICENSE', 'LICENSE.md', 'LICENSE.txt', 'license']) {
    try { text = readFileSync(path.join(dir, file), 'utf8'); break } catch { /* the next name */ }
  }
  if (text === '') throw new Error(`no licence file in ${dir}`)
  return `${name}@${version} (${license}):\n\n${text.trim().replaceAll('*/', '* /')}`
})
const source = `${body}\n/*! Inlined packages and their licences.\n\n${licences.join('\n\n')}\n*/\n`
const hash = createHash('sha256').update(source).digest('hex').slice(0, 16)
writeFileSync(out, `// nbdts-bundle ${hash} (scripts/bundle-cli.ts; the bin's code caches are keyed by this hash)\n${source}`)
chmodSync(out, 0o644)
writeFileSync(list, Object.keys(result.metafile.inputs).map((input) => input.replace(/^.*?node_modules\//, 'node_modules/')).sort().join('\n') + '\n')
// On stderr: npm pack --json prints the build's stdout with its JSON.
console.error(`${path.relative(root, out)}: ${(Buffer.byteLength(source) / 1024).toFixed(0)} KiB, ${Object.keys(result.metafile.inputs).length} modules (${packages.join(', ')} inlined)`)
