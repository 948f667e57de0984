/**
 * How many file descriptors this process has open, and may: what a listener anyone can reach
 * (the metrics port) checks before it keeps a connection, so that the control socket, mounts
 * and reconnects always find descriptors left.
 */
import { readdirSync, readFileSync } from 'node:fs'

/** The soft RLIMIT_NOFILE (from /proc/self/limits); undefined when it cannot be read or is unlimited. */
export function descriptorLimit (): number | undefined {
  try {
    const line = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'))
    return line === null || line[1] === 'unlimited' ? undefined : Number(line[1])
  } catch {
    return undefined
  }
}

/** Descriptors open now (undefined without /proc). */
export function openDescriptors (): number | undefined {
  try {
    return readdirSync('/proc/self/fd').length
  } catch {
    return undefined
  }
}
