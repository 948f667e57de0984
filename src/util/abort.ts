/**
 * A signal that fires when any of `signals` fires, or after `ms` milliseconds (0 = never).
 * `dispose` clears the timer and listeners: call it on every exit so nothing outlives the
 * operation (AbortSignal.timeout and AbortSignal.any keep timers and listeners alive).
 */
export function linkedSignal (signals: ReadonlyArray<AbortSignal | undefined>, ms: number, onTimeout: () => unknown): { signal: AbortSignal, dispose: () => void } {
  const controller = new AbortController()
  const cleanups: Array<() => void> = []
  for (const s of signals) {
    if (s === undefined) continue
    if (s.aborted) {
      controller.abort(s.reason)
      break
    }
    const forward = (): void => { controller.abort(s.reason) }
    s.addEventListener('abort', forward, { once: true })
    cleanups.push(() => { s.removeEventListener('abort', forward) })
  }
  if (ms > 0 && !controller.signal.aborted) {
    const timer = setTimeout(() => { controller.abort(onTimeout()) }, ms)
    cleanups.push(() => { clearTimeout(timer) })
  }
  return {
    signal: controller.signal,
    dispose: () => { for (const c of cleanups) c() }
  }
}
