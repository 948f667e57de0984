/**
 * The mount's readahead. The kernel starts a FUSE mount at 128 KiB (VM_READAHEAD_PAGES) and
 * INIT can only lower it (max_readahead), so a sequential buffered read sends one 128 KiB READ
 * at a time. Root may raise it afterwards through the mount's bdi in sysfs: READs then arrive
 * up to max_pages (1 MiB) each, several in flight (bench/README.md, "FUSE rows, third round").
 * Anyone else keeps the kernel's default.
 */
import { writeFileSync } from 'node:fs'

/** What measured best for `dd bs=1M` and cp from the mount (bench/README.md). */
export const DEFAULT_READAHEAD_KIB = 4096

/** Sets the readahead of the mount whose superblock is `device` ("major:minor"); false if not allowed. */
export function setReadahead (device: string, kib: number): boolean {
  try {
    writeFileSync(`/sys/class/bdi/${device}/read_ahead_kb`, String(kib))
    return true
  } catch {
    // Not root (EACCES), or no sysfs: the kernel's default stays.
    return false
  }
}
