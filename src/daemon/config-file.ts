/**
 * The config file on disk: read the way sshd's StrictModes reads its own, and written (by
 * `add mount ... persist`) so that a crash or a racing user never leaves half a file:
 *
 *   read     open O_NOFOLLOW ─► fstat: a regular file with one name, owned by root or by us,
 *            writable by its owner only ─► read (at most 64 KiB)
 *   append   read as above (keeping dev, ino, mode) ─► create DIR/.NAME.XXXXXX O_EXCL|O_NOFOLLOW
 *            with the same mode ─► write the old text and the new section ─► fsync ─► the path
 *            still names the file we read? ─► rename over it ─► fsync DIR
 *
 * Whoever could change the config could change what a root daemon mounts, so nothing else is
 * trusted; and errors never quote the file (a config path can be made to name a file its
 * reader may not see): `where` (file or file:line) is all a client that is not root is shown.
 */
import { randomBytes } from 'node:crypto'
import { closeSync, constants, fchmodSync, fstatSync, fsyncSync, lstatSync, openSync, renameSync, unlinkSync, writeSync, type Stats } from 'node:fs'
import path from 'node:path'
import { ControlError } from '../control/errors.ts'
import { readFileNoFollow, UnsafeFileError } from '../util/safe-file.ts'

export class ConfigFileError extends ControlError {
  readonly where: string
  constructor (where: string, why: string, options?: { cause?: unknown }) {
    super('CTL_BAD_COMMAND', `${where}: ${why}`, options)
    this.where = where
  }
}

/** Config files are small; anything bigger is not one. */
const MAX_CONFIG_BYTES = 64 * 1024

function strictModes (stat: Stats): string | undefined {
  const euid = process.geteuid?.() ?? -1
  if (stat.uid !== 0 && stat.uid !== euid) return `owned by uid ${stat.uid}; a config file must belong to root${euid === 0 ? '' : ` or to uid ${euid}`}`
  if ((stat.mode & 0o022) !== 0) return `writable by ${(stat.mode & 0o002) !== 0 ? 'everyone' : 'its group'} (mode ${(stat.mode & 0o777).toString(8).padStart(4, '0')}); a config file must be writable by its owner only`
  if (stat.nlink !== 1) return `${stat.nlink} hard links (a file that is also elsewhere)`
  return undefined
}

function readChecked (file: string): { text: string, stat: Stats } {
  try {
    return readFileNoFollow(file, { maxBytes: MAX_CONFIG_BYTES, check: strictModes })
  } catch (err) {
    if (err instanceof UnsafeFileError) throw new ConfigFileError(file, err.why, { cause: err })
    const code = (err as NodeJS.ErrnoException).code
    throw new ConfigFileError(file, `cannot read it (${code ?? String(err)})`, { cause: err })
  }
}

export function readConfigFile (file: string): string {
  return readChecked(file).text
}

/**
 * Appends `section` to the config file atomically (temp file in the same directory, then
 * rename): readers see the old file or the new one, never a mix, and the mode is kept.
 */
export function appendToConfigFile (file: string, section: string): void {
  const { text, stat } = readChecked(file)
  const dir = path.dirname(file)
  const temp = path.join(dir, `.${path.basename(file)}.${randomBytes(6).toString('hex')}`)
  const mode = stat.mode & 0o7777
  const fd = openSync(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode)
  let renamed = false
  try {
    const body = Buffer.from(`${text}${text === '' || text.endsWith('\n') ? '' : '\n'}${section}`)
    let at = 0
    while (at < body.length) at += writeSync(fd, body, at, body.length - at)
    // The umask may have narrowed the mode given to open.
    if ((fstatSync(fd).mode & 0o7777) !== mode) fchmodSync(fd, mode)
    fsyncSync(fd)
    const now = lstatSync(file)
    if (now.dev !== stat.dev || now.ino !== stat.ino) throw new ConfigFileError(file, 'it was replaced while being written; nothing was changed')
    renameSync(temp, file)
    renamed = true
  } finally {
    closeSync(fd)
    if (!renamed) {
      try {
        unlinkSync(temp)
      } catch { /* already gone */ }
    }
  }
  const dirFd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY)
  try {
    fsyncSync(dirFd)
  } finally {
    closeSync(dirFd)
  }
}
