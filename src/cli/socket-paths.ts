/**
 * Where control sockets live. Its own small module so that `nbdts ctl`, run in loops by
 * admins and scripts, finds a socket without loading the daemon or the FUSE code.
 */
import path from 'node:path'

/** Where root's daemon and mounts keep their control sockets unless told otherwise. */
export const CONTROL_DIR = '/run/nbdts'

/** Root's CONTROL_DIR; for other users $XDG_RUNTIME_DIR/nbdts, else /tmp/nbdts-UID. */
export function controlDir (): string {
  const uid = process.geteuid?.() ?? 0
  if (uid === 0) return CONTROL_DIR
  const runtime = process.env.XDG_RUNTIME_DIR
  return runtime !== undefined && runtime !== '' ? path.join(runtime, 'nbdts') : `/tmp/nbdts-${uid}`
}

/** The daemon's socket: $NBDTS_DAEMON_SOCKET, else nbdts.sock in controlDir() (multipathd's MULTIPATH_SOCKET_NAME, on both sides). */
export function daemonSocket (): string {
  const env = process.env.NBDTS_DAEMON_SOCKET
  return env !== undefined && env !== '' ? path.resolve(env) : path.join(controlDir(), 'nbdts.sock')
}

/** A standalone mount's own socket, named after its file. */
export function defaultControlSocket (target: string): string {
  const name = path.resolve(target).slice(1).replace(/\//g, '-').replace(/[^A-Za-z0-9_.-]/g, '_')
  return path.join(controlDir(), `${name}.sock`)
}
