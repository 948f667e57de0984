/**
 * Reconnect back-off: QEMU waits 1, 2, 4, 8, 16, 16... seconds between attempts. We do the
 * same by default, with jitter so that many clients of one restarted server do not all
 * knock at the same instant.
 */
export interface BackoffOptions {
  /** First delay, ms. @default 1000 */
  readonly initialMs?: number
  /** Largest delay, ms. @default 16000 */
  readonly maxMs?: number
  /** Growth per attempt. @default 2 */
  readonly factor?: number
  /** Random spread, as a fraction of the delay (0.2 = ±20%). @default 0.2 */
  readonly jitter?: number
}

/** The delay before retry number `attempt` (1-based), in ms. Pure except for Math.random. */
export function backoffDelay (attempt: number, options: BackoffOptions = {}, random: () => number = Math.random): number {
  const initial = options.initialMs ?? 1000
  const max = options.maxMs ?? 16000
  const factor = options.factor ?? 2
  const jitter = options.jitter ?? 0.2
  const base = Math.min(max, initial * factor ** Math.max(0, attempt - 1))
  return Math.max(0, Math.round(base * (1 + jitter * (2 * random() - 1))))
}
