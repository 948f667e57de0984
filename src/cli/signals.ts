/**
 * The mount daemon's signals, as multipathd has them: SIGHUP reconfigures, the termination
 * signals shut down cleanly. Every signal whose default action kills the process is handled,
 * so none of them can leave a dead (ENOTCONN) mount behind; only SIGKILL can.
 *
 *   SIGHUP                                   reconfigure (re-read --config)
 *   SIGUSR1 SIGUSR2                          report (log the counters); for SIGUSR1 this also
 *                                            keeps Node from opening its inspector port
 *   SIGPIPE                                  ignored (a reader went away: its write fails)
 *   SIGINT SIGTERM SIGQUIT SIGALRM SIGVTALRM
 *   SIGXCPU SIGXFSZ SIGPWR SIGIO SIGSTKFLT    stop (drain, flush, unmount)
 *
 * Left alone: SIGPROF (V8's profiler uses it), and the faults (SIGSEGV, SIGBUS, SIGILL,
 * SIGFPE, SIGSYS, SIGTRAP), after which nothing can be trusted to run.
 */
export interface SignalHandlers {
  readonly stop: (signal: NodeJS.Signals) => void
  readonly reconfigure: (signal: NodeJS.Signals) => void
  readonly report: (signal: NodeJS.Signals) => void
}

export const STOP_SIGNALS: readonly NodeJS.Signals[] = [
  'SIGINT', 'SIGTERM', 'SIGQUIT', 'SIGALRM', 'SIGVTALRM', 'SIGXCPU', 'SIGXFSZ', 'SIGPWR', 'SIGIO', 'SIGSTKFLT'
]

/** Installs the handlers; returns what removes them. */
export function trapSignals (handlers: SignalHandlers): () => void {
  const table: Array<[NodeJS.Signals, (signal: NodeJS.Signals) => void]> = [
    ...STOP_SIGNALS.map((s): [NodeJS.Signals, (signal: NodeJS.Signals) => void] => [s, handlers.stop]),
    ['SIGHUP', handlers.reconfigure],
    ['SIGUSR1', handlers.report],
    ['SIGUSR2', handlers.report],
    ['SIGPIPE', () => {}]
  ]
  for (const [signal, handler] of table) process.on(signal, handler)
  return () => {
    for (const [signal, handler] of table) process.off(signal, handler)
  }
}
