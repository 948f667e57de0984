/**
 * Whom a control client may talk to. A user without $XDG_RUNTIME_DIR keeps its sockets in
 * /tmp/nbdts-UID, and another user can make that directory first and put a fake daemon in it:
 * the victim's `nbdts mount` would send it the whole `add mount` line (credentials included)
 * and print whatever it answers. So before anything is sent:
 *
 *   the directory     the socket's own directory, not a link, owned by root or the user (or by
 *                     whom the caller names), and not writable by others unless sticky; a
 *                     user's directory in a sticky world-writable one (/tmp/nbdts-UID) 0700
 *   the socket file   a socket, owned by root or the user
 *   the peer          SO_PEERCRED: uid root or the user; a given pid (root's `nbdts umount`
 *                     waiting for a user's daemon: that very process)
 *
 * Without peer credentials (koffi missing) the file checks stand alone, unless a pid was asked.
 */
import { lstatSync, type Stats } from 'node:fs'
import type net from 'node:net'
import path from 'node:path'
import { ControlError } from './errors.ts'
import { loadPeerCredentials, readPeerCredentials } from './peer-credentials.ts'

export interface PeerTrust {
  /** Users whose daemon may answer. @default root and the effective user */
  readonly uids?: readonly number[]
  /** The daemon's process, when the caller knows it (checked through SO_PEERCRED). */
  readonly pid?: number
}

function trustedUids (trust: PeerTrust | undefined): readonly number[] {
  return trust?.uids ?? [0, process.geteuid?.() ?? 0]
}

function untrusted (socketPath: string, why: string): ControlError {
  return new ControlError('CTL_UNTRUSTED', `refusing to talk to ${socketPath}: ${why}; nothing was sent`)
}

/** The file checks; throws CTL_UNTRUSTED. A missing socket is left to connect() to report. */
export function checkSocketPlace (socketPath: string, trust?: PeerTrust): void {
  const uids = trustedUids(trust)
  const dir = path.dirname(socketPath)
  let d: Stats
  try {
    d = lstatSync(dir)
  } catch {
    return
  }
  if (!d.isDirectory()) throw untrusted(socketPath, `${dir} is not a directory (a symbolic link?)`)
  if (!uids.includes(d.uid)) throw untrusted(socketPath, `${dir} belongs to uid ${d.uid}, who could have put any daemon there`)
  if ((d.mode & 0o022) !== 0 && (d.mode & 0o1000) === 0) throw untrusted(socketPath, `${dir} is writable by others (mode ${(d.mode & 0o7777).toString(8)})`)
  // A user's directory in /tmp (or any sticky, world-writable one): the daemon makes it 0700 and
  // refuses it otherwise (ensurePrivateDir); so do we.
  if (d.uid !== 0 && (d.mode & 0o077) !== 0 && isSharedTmp(path.dirname(dir))) {
    throw untrusted(socketPath, `${dir} is not private (mode ${(d.mode & 0o7777).toString(8)}, not 0700)`)
  }
  let s: Stats
  try {
    s = lstatSync(socketPath)
  } catch {
    return
  }
  if (!s.isSocket()) throw untrusted(socketPath, 'it is not a socket')
  if (!uids.includes(s.uid)) throw untrusted(socketPath, `the socket belongs to uid ${s.uid}`)
}

function isSharedTmp (dir: string): boolean {
  try {
    const st = lstatSync(dir)
    return (st.mode & 0o1002) === 0o1002
  } catch {
    return false
  }
}

/** The peer check, on a connected socket; throws CTL_UNTRUSTED. */
export async function checkPeer (socket: net.Socket, socketPath: string, trust?: PeerTrust): Promise<void> {
  if (!await loadPeerCredentials()) {
    if (trust?.pid !== undefined) throw untrusted(socketPath, 'its peer cannot be identified (peer credentials need koffi)')
    return
  }
  const peer = readPeerCredentials(socket)
  if (peer === undefined) throw untrusted(socketPath, 'its peer cannot be identified')
  if (!trustedUids(trust).includes(peer.uid)) throw untrusted(socketPath, `the daemon answering there runs as uid ${peer.uid}`)
  if (trust?.pid !== undefined && peer.pid !== trust.pid) throw untrusted(socketPath, `process ${peer.pid} answers there, not the mount's daemon (${trust.pid})`)
}
