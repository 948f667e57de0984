/**
 * The daemon's log: one line per event, with a level filter. Foreground mounts log to
 * stderr; detached ones to --log-file (or nowhere).
 */
import { appendFileSync } from 'node:fs'

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const
export type LogLevel = (typeof LOG_LEVELS)[number]

export interface Logger {
  level: LogLevel
  (level: LogLevel, message: string): void
}

export function createLogger (level: LogLevel, file: string | undefined): Logger {
  const log = ((at: LogLevel, message: string): void => {
    if (LOG_LEVELS.indexOf(at) > LOG_LEVELS.indexOf(log.level)) return
    const line = `${new Date().toISOString()} nbdts[${process.pid}] ${at}: ${message}\n`
    if (file === undefined) process.stderr.write(line)
    else appendFileSync(file, line)
  }) as Logger
  log.level = level
  return log
}
