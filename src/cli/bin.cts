#!/usr/bin/env node
/**
 * The `nbdts` bin. The commands people run in loops and scripts (`info`, `ctl`) and `copy`
 * (timed whole against nbdcopy, whose start-up is 20 ms) start from one bundled file,
 * nbdts.cjs (the CLI, the client and the copier: scripts/bundle-cli.ts), whose compiled code
 * V8 keeps in a per-user cache: such a run neither resolves nor compiles the ~80 ES modules it
 * would otherwise load, which on Node 20 was most of its start-up (Node 20 has no module
 * compile cache; module.enableCompileCache() is Node ≥ 22.1). `--version` is answered here.
 * Every other command (mount, daemon, umount, the help) runs main.js, the modules tsc built:
 * those run for long. So does everything when there is no bundle (a build by tsc alone).
 *
 * The code cache: $XDG_CACHE_HOME/nbdts, else ~/.cache/nbdts, one file per command, bundle
 * (the hash on its first line), Node version and architecture. It is written, 0600 and
 * atomically, at the exit (code 0) of a run that found none or whose cache V8 refused; it is
 * not used when it or its directory is not the user's own or is writable by others (sudo with
 * the user's HOME kept); NBDTS_CODE_CACHE=0 turns it off. A missing or stale cache costs only
 * the compile it would have saved: V8 checks its own version, flags and the source's length,
 * and the file name the bundle's hash.
 *
 * This file is CommonJS, and imports only what Node has loaded already: an ES module entry
 * point alone costs ~12 ms more.
 */
// CommonJS with erasable syntax only: require(), typed.
const fs = require('node:fs') as typeof import('node:fs')
const os = require('node:os') as typeof import('node:os')
const path = require('node:path') as typeof import('node:path')
const vm = require('node:vm') as typeof import('node:vm')
const nodeModule = require('node:module') as typeof import('node:module')

/** What main.ts exports to run a command line. */
interface Program {
  run: (argv: readonly string[]) => void
}

/** The commands the bundle answers; it holds no code for the others (bundle-cli.ts). */
const BUNDLED: ReadonlySet<string> = new Set(['info', 'ctl', 'copy'])

/** Old caches of other builds are removed after this long (a second install may still use its own). */
const STALE_MS = 7 * 24 * 3600_000

interface CodeCache {
  read: () => Buffer | undefined
  write: (data: Buffer) => void
}

function codeCache (command: string, hash: string): CodeCache | undefined {
  if (process.env.NBDTS_CODE_CACHE === '0' || process.getuid === undefined) return undefined
  const uid = process.getuid()
  const xdg = process.env.XDG_CACHE_HOME
  const base = xdg !== undefined && path.isAbsolute(xdg) ? xdg : path.join(os.homedir(), '.cache')
  const dir = path.join(base, 'nbdts')
  const file = path.join(dir, `${command}-${hash}-${process.version}-${process.arch}.v8cache`)
  // Ours alone: no one else could have written it, or could swap it under us.
  const ours = (st: import('node:fs').Stats): boolean => st.uid === uid && (st.mode & 0o022) === 0
  return {
    read () {
      let fd: number | undefined
      try {
        fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW)
        const st = fs.lstatSync(dir)
        return st.isDirectory() && ours(st) && ours(fs.fstatSync(fd)) ? fs.readFileSync(fd) : undefined
      } catch {
        return undefined
      } finally {
        if (fd !== undefined) fs.closeSync(fd)
      }
    },
    write (data) {
      try {
        fs.mkdirSync(base, { recursive: true, mode: 0o700 })
        if (!ours(fs.statSync(base))) return
        try { fs.mkdirSync(dir, { mode: 0o700 }) } catch (err) { if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err }
        const st = fs.lstatSync(dir)
        if (!st.isDirectory() || !ours(st)) return
        const tmp = `${file}.${process.pid}.tmp`
        fs.writeFileSync(tmp, data, { mode: 0o600, flag: 'wx' })
        fs.renameSync(tmp, file)
        for (const name of fs.readdirSync(dir)) {
          const other = path.join(dir, name)
          if (!name.includes(hash) && Date.now() - fs.lstatSync(other).mtimeMs > STALE_MS) fs.rmSync(other, { force: true })
        }
      } catch { /* no cache: the next run compiles again */ }
    }
  }
}

/** The bundle's exports, compiled with the code cache; undefined when there is no bundle. */
function loadBundle (command: string): Program | undefined {
  const file = path.join(__dirname, 'nbdts.cjs')
  let source: string
  try {
    source = fs.readFileSync(file, 'utf8')
  } catch {
    return undefined
  }
  const hash = /^\/\/ nbdts-bundle (\w+)/.exec(source)?.[1]
  const cache = hash === undefined ? undefined : codeCache(command, hash)
  const cachedData = cache?.read()
  // CommonJS's wrapper, on the first line so that line numbers stay the bundle's.
  const script = new vm.Script(`(function (exports, require, module, __filename, __dirname) {${source}\n})`,
    { filename: file, ...(cachedData !== undefined && { cachedData }) })
  if (cache !== undefined && (cachedData === undefined || script.cachedDataRejected === true)) {
    // At the exit, so that the cache holds the functions this command compiled as it ran.
    process.once('exit', (code) => { if (code === 0) cache.write(script.createCachedData()) })
  }
  const module = { exports: {} }
  const wrapper = script.runInThisContext() as (...args: unknown[]) => void
  wrapper(module.exports, nodeModule.createRequire(file), module, file, __dirname)
  return module.exports as Program
}

const argv = process.argv.slice(2)
const command = argv[0] ?? ''
// As main.ts's own answer, without even the bundle (reading and deserialising it would double
// this command's time).
const bundled = argv.length === 1 && (command === '--version' || command === '-V')
  ? { run: () => { process.stdout.write(`${(JSON.parse(fs.readFileSync(path.join(__dirname, '../../package.json'), 'utf8')) as { version: string }).version}\n`) } }
  : BUNDLED.has(command) ? loadBundle(command) : undefined
if (bundled !== undefined) {
  bundled.run(argv)
} else {
  import('./main.ts').then((program: Program) => { program.run(argv) }, (err: unknown) => {
    process.stderr.write(`nbdts: ${String(err)}\n`)
    process.exitCode = 1
  })
}
