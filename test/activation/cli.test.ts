/**
 * `[ CMD ... ]` on the command line: the words inside are the server's (its flags never reach
 * our parser), it runs with socket activation, and it is gone when nbdts exits.
 */
import assert from 'node:assert/strict'
import { test } from 'node:test'
import '../helpers/assert.ts'
import { extractServerCommands } from '../../src/cli/server-command.ts'
import { nbdts } from '../helpers/cli.ts'

test('extractServerCommands: first "]" ends a command, "--" ends the scan, errors for "[" alone and "[ ]"', () => {
  const { argv, commands } = extractServerCommands(['info', '--json', '[', 'nbdkit', '-r', '--filter=delay', 'memory', '1M', ']', 'x'])
  assert.deepEqual(commands, [['nbdkit', '-r', '--filter=delay', 'memory', '1M']])
  assert.equal(argv.length, 4)
  assert.equal(argv[3], 'x')
  assert.ok(argv[2]!.startsWith('\u0000'))
  assert.deepEqual(extractServerCommands(['copy', '--', '[', 'a', ']']).commands, [])
  assert.throws(() => extractServerCommands(['info', '[', 'nbdkit']), { code: 'NBD_ERR_INVALID_ARGUMENT' })
  assert.throws(() => extractServerCommands(['info', '[', ']']), { code: 'NBD_ERR_INVALID_ARGUMENT' })
})

test('nbdts info [ nbdkit ... ] (with its own -r flag), --json, --map; a failing command names its exit', async () => {
  const r = await nbdts(['info', '--json', '[', 'nbdkit', '-r', 'data', '@0x10000 1 2 3', 'size=1M', ']'])
  assert.equal(r.code, 0, r.stderr)
  const info = JSON.parse(r.stdout) as { exports: Array<Record<string, unknown>> }
  assert.equal(info.exports[0]!['export-size'], 1 << 20)
  assert.equal(info.exports[0]!.is_read_only, true)

  const map = await nbdts(['info', '--map', '--json', '[', 'nbdkit', 'data', '@0x10000 1 2 3', 'size=1M', ']'])
  assert.equal(map.code, 0, map.stderr)
  assert.ok((JSON.parse(map.stdout) as unknown[]).length >= 2)

  const bad = await nbdts(['info', '[', 'nbdkit', 'no-such-plugin-here', ']'])
  assert.equal(bad.code, 1)
  assert.match(bad.stderr, /^nbdts: .*nbdkit exited with code 1/m)

  const usage = await nbdts(['info', '[', 'nbdkit'])
  assert.equal(usage.code, 2)
  assert.match(usage.stderr, /no "\]" ends it/)
})
