import { InvalidArgumentError } from 'commander'

/**
 * Command-line durations: a bare number is seconds (as QEMU's reconnect-delay and
 * open-timeout), or give a unit: 500ms, 2s, 1m. Returns milliseconds.
 */
export function parseDuration (text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text.trim())
  if (match === null) throw new InvalidArgumentError(`"${text}" is not a duration (examples: 5, 2.5s, 500ms, 1m)`)
  const value = Number(match[1])
  const unit = match[2] ?? 's'
  return Math.round(value * (unit === 'ms' ? 1 : unit === 's' ? 1000 : 60_000))
}

export function parseCount (text: string): number {
  const n = Number(text)
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`"${text}" is not a positive integer`)
  return n
}

/** A connection count, or "auto" (as many as the server allows for multi-conn, up to 4). */
export function parseConnections (text: string): number | 'auto' {
  return text === 'auto' ? 'auto' : parseCount(text)
}
