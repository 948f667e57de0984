/**
 * Reconnect back-off. QEMU waits 1, 2, 4, 8, 16, 16... seconds between attempts, and so do we
 * while nobody waits. While requests wait for the server, attempts stay dense (`waitingMs`,
 * jittered): a server that restarts in 300 ms is found within a fraction of a second, not
 * after the 16 s sleep that a long outage earlier left the back-off at. Jitter keeps many
 * clients of one restarted server from knocking at the same instant.
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
  /**
   * Largest delay while requests wait for the server, ms. @default 50 over a Unix socket
   * (the socket file is also watched: its reappearance is tried at once), 200 over TCP
   */
  readonly waitingMs?: number
}

/**
 * The delay before retry number `attempt` (1-based), in ms; `waiting`: requests wait for the
 * server. Pure except for Math.random.
 */
export function backoffDelay (attempt: number, options: BackoffOptions = {}, waiting = false, random: () => number = Math.random): number {
  const initial = options.initialMs ?? 1000
  const max = options.maxMs ?? 16000
  const factor = options.factor ?? 2
  const jitter = options.jitter ?? 0.2
  let base = Math.min(max, initial * factor ** Math.max(0, attempt - 1))
  if (waiting) base = Math.min(base, options.waitingMs ?? 200)
  return Math.max(0, Math.round(base * (1 + jitter * (2 * random() - 1))))
}
