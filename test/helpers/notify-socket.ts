/**
 * A fake systemd NOTIFY_SOCKET: a bound AF_UNIX datagram socket (through koffi, since Node has
 * none), read without blocking every few milliseconds. Each datagram is one notification.
 */
import { createRequire } from 'node:module'

interface Koffi {
  load: (path: string) => { func: (signature: string) => (...args: unknown[]) => unknown }
}

const koffi = createRequire(import.meta.url)('koffi') as Koffi
const libc = koffi.load('libc.so.6')
const socket = libc.func('int socket(int domain, int type, int protocol)') as (d: number, t: number, p: number) => number
const bind = libc.func('int bind(int fd, const void *addr, uint32_t len)') as (fd: number, addr: Buffer, len: number) => number
const recv = libc.func('intptr_t recv(int fd, _Out_ uint8_t *buf, size_t len, int flags)') as (fd: number, buf: Buffer, len: number, flags: number) => number
const close = libc.func('int close(int fd)') as (fd: number) => number

const AF_UNIX = 1
const SOCK_DGRAM = 2
const SOCK_CLOEXEC = 0o2000000
const MSG_DONTWAIT = 0x40

export interface NotifySocket {
  readonly path: string
  /** Every datagram so far, in order. */
  readonly messages: string[]
  /** Resolves with the first datagram (from `from` on) that `match` accepts. */
  next: (match: (message: string) => boolean, from?: number) => Promise<string>
  close: () => void
}

export function notifySocket (path: string): NotifySocket {
  const fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)
  const address = Buffer.alloc(110)
  address.writeUInt16LE(AF_UNIX, 0)
  Buffer.from(path).copy(address, 2)
  if (bind(fd, address, 2 + Buffer.byteLength(path) + 1) !== 0) throw new Error(`bind ${path} failed`)
  const messages: string[] = []
  const buffer = Buffer.alloc(4096)
  const poll = setInterval(() => {
    for (;;) {
      const n = Number(recv(fd, buffer, buffer.length, MSG_DONTWAIT))
      if (n <= 0) return
      messages.push(buffer.toString('utf8', 0, n))
    }
  }, 5)
  return {
    path,
    messages,
    next: async (match, from = 0) => {
      for (;;) {
        const found = messages.slice(from).find(match)
        if (found !== undefined) return found
        await new Promise((resolve) => setTimeout(resolve, 10))
      }
    },
    close: () => {
      clearInterval(poll)
      close(fd)
    }
  }
}
