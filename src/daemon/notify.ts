/**
 * systemd's notification protocol (sd_notify(3)), written here: one datagram of
 * newline-separated KEY=VALUE lines to the AF_UNIX socket named by NOTIFY_SOCKET (a path, or
 * "@name" for an abstract socket). Node has no datagram Unix sockets, so the socket and its
 * sendto(2) go through koffi (util/libc.ts).
 *
 *   start          READY=1 and STATUS= once every mount of the config is up or failed
 *   reconfigure    RELOADING=1 + MONOTONIC_USEC= ... then READY=1 and STATUS=
 *   shutdown       STOPPING=1 (after READY=1, if a reload was still going on: 0d4db707)
 *   WATCHDOG_USEC  WATCHDOG=1 every half interval, from the event loop (a stuck loop stops it)
 *
 * Without NOTIFY_SOCKET, or when it cannot be used, everything here does nothing (a failed
 * send is logged once). The variables are removed from our environment, as
 * sd_notify(unset_environment) does, so the mount tools we run do not see them.
 */
import type { LogFn } from '../fuse/log.ts'
import { closeFd, datagramSocket, sendDatagram } from '../util/libc.ts'

export class SystemdNotifier {
  readonly #target: string | undefined
  readonly #log: LogFn
  #fd = -1
  #failed = false
  #watchdog: NodeJS.Timeout | null = null
  #reloading = false
  readonly #watchdogUsec: number

  constructor (log: LogFn, env: NodeJS.ProcessEnv = process.env) {
    this.#log = log
    const target = env.NOTIFY_SOCKET
    this.#target = target !== undefined && target !== '' && (target.startsWith('/') || target.startsWith('@')) ? target : undefined
    const usec = Number(env.WATCHDOG_USEC)
    const pid = env.WATCHDOG_PID === undefined ? process.pid : Number(env.WATCHDOG_PID)
    this.#watchdogUsec = Number.isInteger(usec) && usec > 0 && pid === process.pid ? usec : 0
    if (env === process.env) {
      delete process.env.NOTIFY_SOCKET
      delete process.env.WATCHDOG_USEC
      delete process.env.WATCHDOG_PID
    }
  }

  get enabled (): boolean {
    return this.#target !== undefined
  }

  /** Sends `lines` as one datagram. */
  notify (...lines: string[]): void {
    const target = this.#target
    if (target === undefined || this.#failed) return
    try {
      if (this.#fd < 0) this.#fd = datagramSocket('systemd notification (NOTIFY_SOCKET)')
      sendDatagram(this.#fd, target, Buffer.from(lines.join('\n') + '\n'))
    } catch (err) {
      this.#failed = true
      this.#log('warn', `systemd notification to ${target} failed: ${(err as Error).message}; no more will be sent`)
    }
  }

  ready (status: string): void {
    this.#reloading = false
    this.notify('READY=1', `STATUS=${oneLine(status)}`)
    this.#startWatchdog()
  }

  reloading (status: string): void {
    this.#reloading = true
    // CLOCK_MONOTONIC in µs: libuv's hrtime reads that clock.
    this.notify('RELOADING=1', `MONOTONIC_USEC=${process.hrtime.bigint() / 1000n}`, `STATUS=${oneLine(status)}`)
  }

  status (status: string): void {
    this.notify(`STATUS=${oneLine(status)}`)
  }

  stopping (status: string): void {
    if (this.#reloading) this.notify('READY=1')
    this.#reloading = false
    this.notify('STOPPING=1', `STATUS=${oneLine(status)}`)
  }

  #startWatchdog (): void {
    if (this.#watchdogUsec === 0 || this.#watchdog !== null || this.#target === undefined) return
    const every = Math.max(1, Math.floor(this.#watchdogUsec / 2000))
    this.notify('WATCHDOG=1')
    this.#watchdog = setInterval(() => { this.notify('WATCHDOG=1') }, every)
    this.#watchdog.unref()
  }

  close (): void {
    if (this.#watchdog !== null) clearInterval(this.#watchdog)
    this.#watchdog = null
    if (this.#fd >= 0) closeFd(this.#fd)
    this.#fd = -1
  }
}

function oneLine (text: string): string {
  return text.replace(/[\r\n]+/g, ' ')
}
