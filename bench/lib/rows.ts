/**
 * What is measured: rows grouped into suites, the same rows for every contender of a suite.
 *
 *   library     our library against QEMU's client, libnbd and @vates/nbd-client (Unix socket)
 *   tcp         a few of the same rows over TCP loopback
 *   tls         TLS with a PSK (QEMU's client over TLS only as qemu-img convert: 7.2's bench has no --object)
 *   copy        the whole export to nowhere (nbdcopy's job), dense and sparse
 *   multi-conn  4 connections (the servers advertise CAN_MULTI_CONN)
 *   fuse        fio (libaio, direct=1) on the mounted file: nbdts mount (its defaults, and one
 *               connection) against nbdfuse (its defaults); dd and cp through the page cache
 */
import type { ExportName } from './exports.ts'

export type Pattern = 'randread' | 'randwrite' | 'read' | 'write'
export type SuiteName = 'library' | 'tcp' | 'tls' | 'copy' | 'multi-conn' | 'fuse'

export interface Row {
  readonly id: string
  readonly suite: SuiteName
  readonly label: string
  /** io: timed loops; copy: read the whole export once, timed; fuse rows run fio on a mount. */
  readonly kind: 'io' | 'copy' | 'fuse'
  readonly rw: Pattern
  /** Request (or fio block) size in bytes. */
  readonly bs: number
  /** Requests in flight, in all (library), or per fio job (fuse). */
  readonly qd: number
  /** fio jobs on a mount. */
  readonly jobs?: number
  /** NBD connections. */
  readonly connections?: number
  readonly export: ExportName
  /** 4 KiB rows count operations; the rest bandwidth. */
  readonly unit: 'IOPS' | 'MiB/s'
  /** Part of `--quick`. */
  readonly quick?: boolean
  /** fuse rows through the page cache: dd (read or write, per `rw`) or cp onto the export. */
  readonly buffered?: 'dd' | 'cp'
}

const K = 4096
const M = 1 << 20

export const ROWS: readonly Row[] = [
  { id: '4k-randread-qd1', suite: 'library', label: '4 KiB random read, QD 1', kind: 'io', rw: 'randread', bs: K, qd: 1, export: 'mem', unit: 'IOPS' },
  { id: '4k-randread-qd16', suite: 'library', label: '4 KiB random read, QD 16', kind: 'io', rw: 'randread', bs: K, qd: 16, export: 'mem', unit: 'IOPS', quick: true },
  { id: '4k-randread-qd64', suite: 'library', label: '4 KiB random read, QD 64', kind: 'io', rw: 'randread', bs: K, qd: 64, export: 'mem', unit: 'IOPS' },
  { id: '4k-randwrite-qd16', suite: 'library', label: '4 KiB random write, QD 16', kind: 'io', rw: 'randwrite', bs: K, qd: 16, export: 'mem', unit: 'IOPS', quick: true },
  { id: '1m-read-qd16', suite: 'library', label: '1 MiB sequential read, QD 16', kind: 'io', rw: 'read', bs: M, qd: 16, export: 'mem', unit: 'MiB/s', quick: true },
  { id: '1m-write-qd16', suite: 'library', label: '1 MiB sequential write, QD 16', kind: 'io', rw: 'write', bs: M, qd: 16, export: 'mem', unit: 'MiB/s' },
  { id: '1m-read-qd64', suite: 'library', label: '1 MiB sequential read, QD 64 (memory row)', kind: 'io', rw: 'read', bs: M, qd: 64, export: 'mem', unit: 'MiB/s' },

  { id: 'tcp-4k-randread-qd16', suite: 'tcp', label: 'TCP 4 KiB random read, QD 16', kind: 'io', rw: 'randread', bs: K, qd: 16, export: 'mem-tcp', unit: 'IOPS' },
  { id: 'tcp-4k-randwrite-qd16', suite: 'tcp', label: 'TCP 4 KiB random write, QD 16', kind: 'io', rw: 'randwrite', bs: K, qd: 16, export: 'mem-tcp', unit: 'IOPS' },
  { id: 'tcp-1m-read-qd16', suite: 'tcp', label: 'TCP 1 MiB sequential read, QD 16', kind: 'io', rw: 'read', bs: M, qd: 16, export: 'mem-tcp', unit: 'MiB/s' },
  { id: 'tcp-1m-write-qd16', suite: 'tcp', label: 'TCP 1 MiB sequential write, QD 16', kind: 'io', rw: 'write', bs: M, qd: 16, export: 'mem-tcp', unit: 'MiB/s' },

  { id: 'tls-1m-read-qd16', suite: 'tls', label: 'TLS 1 MiB sequential read, QD 16', kind: 'io', rw: 'read', bs: M, qd: 16, export: 'tls', unit: 'MiB/s' },
  { id: 'tls-copy', suite: 'tls', label: 'TLS copy 1 GiB to null, 1 MiB × 16', kind: 'copy', rw: 'read', bs: M, qd: 16, export: 'tls', unit: 'MiB/s', quick: true },

  { id: 'copy-dense', suite: 'copy', label: 'copy 1 GiB of data to null, 1 MiB × 16', kind: 'copy', rw: 'read', bs: M, qd: 16, export: 'mem', unit: 'MiB/s', quick: true },
  { id: 'copy-sparse', suite: 'copy', label: 'copy 1 GiB sparse (10% data) to null', kind: 'copy', rw: 'read', bs: M, qd: 16, export: 'sparse', unit: 'MiB/s' },

  { id: 'mc-4k-randread-qd64', suite: 'multi-conn', label: '4 conns: 4 KiB random read, QD 64', kind: 'io', rw: 'randread', bs: K, qd: 64, connections: 4, export: 'mem', unit: 'IOPS' },
  { id: 'mc-1m-read-qd64', suite: 'multi-conn', label: '4 conns: 1 MiB sequential read, QD 64', kind: 'io', rw: 'read', bs: M, qd: 64, connections: 4, export: 'mem', unit: 'MiB/s' },
  { id: 'mc-copy-dense', suite: 'multi-conn', label: '4 conns: copy 1 GiB of data to null', kind: 'copy', rw: 'read', bs: M, qd: 64, connections: 4, export: 'mem', unit: 'MiB/s' },

  { id: 'fuse-4k-randread-1x1', suite: 'fuse', label: 'FUSE 4 KiB random read, QD 1', kind: 'fuse', rw: 'randread', bs: K, qd: 1, jobs: 1, export: 'mem', unit: 'IOPS' },
  { id: 'fuse-4k-randread-4x1', suite: 'fuse', label: 'FUSE 4 KiB random read, 4 jobs × QD 1', kind: 'fuse', rw: 'randread', bs: K, qd: 1, jobs: 4, export: 'mem', unit: 'IOPS' },
  { id: 'fuse-4k-randread-4x16', suite: 'fuse', label: 'FUSE 4 KiB random read, 4 jobs × QD 16', kind: 'fuse', rw: 'randread', bs: K, qd: 16, jobs: 4, export: 'mem', unit: 'IOPS', quick: true },
  { id: 'fuse-4k-randwrite-4x16', suite: 'fuse', label: 'FUSE 4 KiB random write, 4 jobs × QD 16', kind: 'fuse', rw: 'randwrite', bs: K, qd: 16, jobs: 4, export: 'mem', unit: 'IOPS' },
  { id: 'fuse-1m-read-qd16', suite: 'fuse', label: 'FUSE 1 MiB sequential read, QD 16', kind: 'fuse', rw: 'read', bs: M, qd: 16, jobs: 1, export: 'mem', unit: 'MiB/s', quick: true },
  { id: 'fuse-1m-write-qd16', suite: 'fuse', label: 'FUSE 1 MiB sequential write, QD 16', kind: 'fuse', rw: 'write', bs: M, qd: 16, jobs: 1, export: 'mem', unit: 'MiB/s' },
  { id: 'fuse-copy', suite: 'fuse', label: 'FUSE copy 1 GiB to null (dd bs=1M iflag=direct)', kind: 'fuse', rw: 'read', bs: M, qd: 1, jobs: 1, export: 'mem', unit: 'MiB/s' },
  // Buffered I/O, what cp, dd without iflag=direct and qemu-img's default cache mode use: the
  // page cache and the kernel's readahead and request sizes decide, not fio's queue.
  { id: 'fuse-buffered-read', suite: 'fuse', label: 'FUSE buffered read 1 GiB to null (dd bs=1M, cache dropped)', kind: 'fuse', rw: 'read', bs: M, qd: 1, jobs: 1, export: 'mem', unit: 'MiB/s', buffered: 'dd' },
  { id: 'fuse-buffered-write', suite: 'fuse', label: 'FUSE buffered write 1 GiB (dd bs=1M conv=fsync)', kind: 'fuse', rw: 'write', bs: M, qd: 1, jobs: 1, export: 'mem', unit: 'MiB/s', buffered: 'dd' },
  { id: 'fuse-buffered-cp', suite: 'fuse', label: 'FUSE cp of a 1 GiB local file onto the export', kind: 'fuse', rw: 'write', bs: M, qd: 1, jobs: 1, export: 'mem', unit: 'MiB/s', buffered: 'cp' }
]

/** The result of one timed run. */
export interface Sample {
  /** IOPS or MiB/s, per the row's unit. */
  readonly value: number
  /** Peak resident memory of the nbdts process, MiB, when known. */
  readonly rssMiB?: number
}

export function toValue (row: Row, ops: number, seconds: number): number {
  return row.unit === 'IOPS' ? ops / seconds : (ops * row.bs) / M / seconds
}

/** Bytes per second → the row's unit (copy rows: bytes of the export over the time). */
export function bandwidth (bytes: number, seconds: number): number {
  return bytes / M / seconds
}
