/**
 * `[ CMD ... ]` on the command line, as nbdcopy, nbdinfo and nbdfuse take it: a server run as a
 * child with socket activation (src/activation) in place of a URI.
 *
 *   nbdts info [ nbdkit memory 1G ]
 *   nbdts copy [ qemu-nbd -f qcow2 disk.qcow2 ] out.img
 *
 * The words between "[" and the next "]" belong to the command, so its own flags never reach
 * commander: main() takes them out first and leaves a placeholder that no shell can produce
 * (it starts with a NUL byte), which the command's handler turns back into the command.
 */
import type { ServerCommand } from '../activation/index.ts'
import { InvalidArgumentError } from '../errors.ts'
import type { OpenSocket } from '../transport/open-socket.ts'

const MARK = '\u0000server-command:'

export type ServerCommands = ReadonlyArray<readonly string[]>

/** Replaces each `[ CMD ... ]` in argv with a placeholder; returns the commands in order. */
export function extractServerCommands (argv: readonly string[]): { argv: string[], commands: string[][] } {
  const out: string[] = []
  const commands: string[][] = []
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i]!
    // After "--" every word is an operand, brackets included.
    if (word === '--') {
      out.push(...argv.slice(i))
      break
    }
    if (word !== '[') {
      out.push(word)
      continue
    }
    const close = argv.indexOf(']', i + 1)
    if (close === -1) throw new InvalidArgumentError('"[" starts a server command but no "]" ends it')
    const command = argv.slice(i + 1, close)
    if (command.length === 0) throw new InvalidArgumentError('"[ ]" holds no server command')
    out.push(`${MARK}${commands.length}`)
    commands.push(command)
    i = close
  }
  return { argv: out, commands }
}

/** The command a placeholder stands for, or undefined for an ordinary argument. */
export function serverCommandOf (arg: string, commands: ServerCommands): readonly string[] | undefined {
  if (!arg.startsWith(MARK)) return undefined
  return commands[Number(arg.slice(MARK.length))]
}

/** How to print an argument that may be a placeholder. */
export function describeTarget (arg: string, commands: ServerCommands): string {
  const command = serverCommandOf(arg, commands)
  return command === undefined ? arg : `[ ${command.join(' ')} ]`
}

export interface NbdTarget {
  /** The URI to connect to (the activated socket's, for a command). */
  readonly uri: string
  /** The opener to pass to NbdClient (names the exit status when the server died). */
  readonly open?: OpenSocket
  /** The server started for `[ CMD ]`, stopped by withNbdTarget. */
  readonly server?: ServerCommand
}

/**
 * Runs `fn` with the NBD target an argument names: a URI as it is, or a placeholder's command
 * started with socket activation and stopped once `fn` settles.
 */
export async function withNbdTarget<T> (arg: string, commands: ServerCommands, fn: (target: NbdTarget) => Promise<T>, signal?: AbortSignal): Promise<T> {
  const command = serverCommandOf(arg, commands)
  if (command === undefined) return await fn({ uri: arg })
  const { startServerCommand } = await import('../activation/index.ts')
  const server = await startServerCommand(command, signal === undefined ? {} : { signal })
  try {
    return await fn({ uri: server.uri, open: server.open, server })
  } catch (err) {
    throw await server.explain(err)
  } finally {
    await server.stop()
  }
}
