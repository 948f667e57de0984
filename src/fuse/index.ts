export { FuseMount, cleanStaleMount } from './fuse-mount.ts'
export type { MountExportOptions } from './fuse-mount.ts'
export type { FuseStats, Layout, LogFn } from './filesystem.ts'
export { daemonPid, nbdtsMountAt, isStale, unmount } from './mount-table.ts'
