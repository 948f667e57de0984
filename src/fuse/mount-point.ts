/**
 * Checking and pinning a mount target, so that root mounts exactly what was checked and not
 * what another user put there. The attack: a user who owns the directory swaps `disk.img` for
 * a link to /etc/passwd (before the check, or between check and mount), and root mounts bytes
 * the user's server chooses over it.
 *
 *   1. lstat: refuse a symbolic link, and anything but a regular file or directory
 *   2. realpath must be the path itself: no directory on the way is a symbolic link
 *   3. every directory on the way is owned by root or the mounting user and writable by no one
 *      else, except a sticky one (/tmp) whose next entry is owned by root or that user
 *      (fusermount3's rule for sticky directories)
 *   4. open the target O_PATH | O_NOFOLLOW and check it is the inode lstat saw; the mount is
 *      made on /proc/self/fd/N, which names that inode whatever the path points to later
 *
 * After the mount, mountinfo must show it at the target: if the path was moved away meanwhile,
 * the mount is undone (it sits on the inode that was checked, so nothing else was covered).
 */
import { closeSync, constants, fstatSync, lstatSync, openSync, realpathSync, type Stats } from 'node:fs'
import path from 'node:path'
import { MountError } from '../errors.ts'

/** Linux O_PATH: a descriptor that names an inode without opening it for I/O (libuv adds O_CLOEXEC). */
const O_PATH = 0o10000000
const S_ISVTX = 0o1000

export interface PinnedTarget {
  readonly path: string
  readonly kind: 'file' | 'dir'
  /** O_PATH | O_NOFOLLOW descriptor of the checked inode; the caller closes it. */
  readonly fd: number
}

function refuse (target: string, why: string): never {
  throw new MountError('unsafe-target', `refusing to mount over ${target}: ${why}`)
}

function trusted (uid: number, owner: number): boolean {
  return owner === 0 || owner === uid
}

/**
 * Checks `target` (absolute, normalised) for a mount by user `uid` and pins it. Throws a
 * MountError ('unsafe-target') saying what is wrong, or the lstat error (ENOENT...).
 */
export function pinMountTarget (target: string, uid: number): PinnedTarget {
  if (!path.isAbsolute(target) || path.normalize(target) !== target) refuse(target, 'the path must be absolute and normalised')
  const st = lstatSync(target)
  if (st.isSymbolicLink()) refuse(target, 'it is a symbolic link (name the file it points to, if you trust it)')
  const kind = st.isDirectory() ? 'dir' : st.isFile() ? 'file' : undefined
  if (kind === undefined) refuse(target, 'it is neither a regular file nor a directory')
  const real = realpathSync.native(target)
  if (real !== target) refuse(target, `it resolves to ${real} (a directory on its path is a symbolic link)`)
  checkAncestors(target, uid, st)
  const fd = openSync(target, O_PATH | constants.O_NOFOLLOW)
  try {
    const pinned = fstatSync(fd)
    if (pinned.dev !== st.dev || pinned.ino !== st.ino) refuse(target, 'it was replaced while being checked')
  } catch (err) {
    closeSync(fd)
    throw err
  }
  return { path: target, kind, fd }
}

/** Step 3: nobody but root and `uid` can change what any component of `target` names. */
function checkAncestors (target: string, uid: number, targetStat: Stats): void {
  const parts = target.split('/').filter((p) => p !== '')
  let dir = '/'
  for (let i = 0; i < parts.length; i++) {
    const entry = path.join(dir, parts[i]!)
    const d = lstatSync(dir)
    const entryOwner = i === parts.length - 1 ? targetStat.uid : lstatSync(entry).uid
    if (!trusted(uid, d.uid)) {
      refuse(target, `${dir} is owned by uid ${d.uid}, who could replace ${entry} (mount as that user, or somewhere only ${uid === 0 ? 'root controls' : 'you and root control'})`)
    }
    if ((d.mode & 0o022) !== 0) {
      const sticky = (d.mode & S_ISVTX) !== 0
      if (!sticky) refuse(target, `${dir} is writable by others (mode ${(d.mode & 0o7777).toString(8)}), who could replace ${entry}`)
      if (!trusted(uid, entryOwner)) refuse(target, `${entry} is owned by uid ${entryOwner} in the sticky directory ${dir}, so that user could replace it`)
    }
    dir = entry
  }
}
