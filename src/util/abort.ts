import { AbortedError } from '../errors.ts'

/**
 * Races `promise` against `signal`: rejects with AbortedError as soon as the signal fires, and
 * removes its listener either way so long-lived signals do not collect listeners.
 */
export function raceAbort<T> (promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return promise
  if (signal.aborted) {
    promise.catch(() => {})
    return Promise.reject(new AbortedError(signal.reason))
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => {
      reject(new AbortedError(signal.reason))
    }
    signal.addEventListener('abort', onAbort, { once: true })
    promise.then(
      (value) => { signal.removeEventListener('abort', onAbort); resolve(value) },
      (err: unknown) => { signal.removeEventListener('abort', onAbort); reject(err) }
    )
  })
}

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
