/** How the FUSE layer reports what happens (the daemon's logger, or nothing). */
export type LogFn = (level: 'debug' | 'info' | 'warn' | 'error', message: string) => void
