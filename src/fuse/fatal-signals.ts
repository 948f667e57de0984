/**
 * Is a thread being killed? The kernel queues SIGKILL on every thread of a process that got a
 * fatal signal (complete_signal(): any signal whose action is to die, not only SIGKILL), and
 * /proc/TID/status shows a thread's pending set (SigPnd) and its process's (ShdPnd), even
 * while the thread sleeps uninterruptibly waiting for us. A thread that cannot be looked at
 * (gone, or another pid namespace) is not taken for dying: its request is answered normally.
 */
import { readFileSync } from 'node:fs'

const SIGKILL_BIT = 1n << 8n

export function fatalSignalPending (tid: number): boolean {
  let status: string
  try {
    status = readFileSync(`/proc/${tid}/status`, 'latin1')
  } catch {
    return false
  }
  return pendingHas(status, 'SigPnd') || pendingHas(status, 'ShdPnd')
}

function pendingHas (status: string, field: string): boolean {
  const match = new RegExp(`^${field}:\\s*([0-9a-f]+)$`, 'm').exec(status)
  return match !== null && (BigInt(`0x${match[1]!}`) & SIGKILL_BIT) !== 0n
}
