#!/usr/bin/env node
/**
 * The nbdts command line. Every command prints one clear line and exits non-zero on error,
 * never a stack trace (set NBDTS_DEBUG=1 to see one).
 */
import { readFileSync } from 'node:fs'
import { Command, CommanderError, Option } from 'commander'
import { describeError } from '../errors.ts'
import { parseDuration } from './durations.ts'
import { runInfo } from './info.ts'

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }

const out = (text: string): void => { process.stdout.write(text + '\n') }

export function buildProgram (): Command {
  const program = new Command('nbdts')
    .description('A userspace NBD client: inspect exports, mount them as a local file, control running mounts')
    .version(pkg.version)
    .showHelpAfterError()
    .exitOverride()

  program.command('info')
    .description('show what an NBD server offers (like nbdinfo)')
    .argument('<uri>', 'NBD URI: nbd://host[:port]/export, nbd+unix:///export?socket=PATH, nbds://...')
    .option('--json', 'machine-readable output')
    .option('--list', "list every export the server offers (NBD_OPT_LIST)")
    .option('--map', 'print the extents of the export (block status)')
    .option('--context <name>', 'meta context for --map', 'base:allocation')
    .addOption(new Option('--open-timeout <duration>', 'keep retrying the first connect this long (seconds, or 500ms, 2s)').argParser(parseDuration))
    .action(async (uri: string, options: { json?: boolean, list?: boolean, map?: boolean, context?: string, openTimeout?: number }) => {
      await runInfo(uri, options, { out })
    })

  return program
}

export async function main (argv: readonly string[]): Promise<number> {
  const program = buildProgram()
  try {
    await program.parseAsync(argv, { from: 'user' })
    return 0
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version exit 0; usage errors were already printed by commander.
      return err.exitCode === 0 ? 0 : 2
    }
    process.stderr.write(`nbdts: ${describeError(err)}\n`)
    if (process.env.NBDTS_DEBUG === '1' && err instanceof Error) process.stderr.write(`${err.stack ?? ''}\n`)
    return 1
  }
}

// Run when executed, not when imported by the tests.
if (process.argv[1] !== undefined && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  main(process.argv.slice(2)).then((code) => { process.exitCode = code }, (err: unknown) => {
    process.stderr.write(`nbdts: ${describeError(err)}\n`)
    process.exitCode = 1
  })
}
