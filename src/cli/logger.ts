/**
 * The daemon's log: one line per event, with a level filter. Foreground mounts log to
 * stderr; detached ones to --log-file (or nowhere).
 *
 * The log file is opened once, when the logger is made (never through a symbolic link, only a
 * regular file we own, mode 0640: openOwnFile), and every line goes through that descriptor:
 * swapping the path afterwards changes nothing. Messages quote servers (descriptions, error
 * messages), so control characters are escaped: one event is always exactly one line.
 */
import { writeSync } from 'node:fs'
import { openOwnFile } from '../util/safe-file.ts'
import { printable } from '../util/printable.ts'

import { LOG_LEVELS, type LogLevel } from './log-level.ts'

export { LOG_LEVELS, type LogLevel } from './log-level.ts'

export interface Logger {
  level: LogLevel
  (level: LogLevel, message: string): void
}

export const LOG_FILE_MODE = 0o640

export function createLogger (level: LogLevel, file: string | undefined): Logger {
  const fd = file === undefined ? undefined : openOwnFile(file, LOG_FILE_MODE, { append: true })
  const log = ((at: LogLevel, message: string): void => {
    if (LOG_LEVELS.indexOf(at) > LOG_LEVELS.indexOf(log.level)) return
    const line = `${new Date().toISOString()} nbdts[${process.pid}] ${at}: ${printable(message)}\n`
    if (fd === undefined) process.stderr.write(line)
    else writeSync(fd, line)
  }) as Logger
  log.level = level
  return log
}
