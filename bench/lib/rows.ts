/** What is measured: one row per workload, the same for every contender. */
export type Pattern = 'randread' | 'randwrite' | 'read' | 'write'

export interface Row {
  readonly id: string
  readonly label: string
  readonly rw: Pattern
  /** Block size in bytes. */
  readonly bs: number
  /** Requests in flight (per job). */
  readonly qd: number
  /** Parallel jobs (fio numjobs); 1 for library rows. */
  readonly jobs?: number
  /** 4 KiB rows count operations; 1 MiB rows count bandwidth. */
  readonly unit: 'IOPS' | 'MiB/s'
}

const K = 4096
const M = 1 << 20

export const LIBRARY_ROWS: readonly Row[] = [
  { id: '4k-randread-qd1', label: '4 KiB random read, QD 1', rw: 'randread', bs: K, qd: 1, unit: 'IOPS' },
  { id: '4k-randread-qd16', label: '4 KiB random read, QD 16', rw: 'randread', bs: K, qd: 16, unit: 'IOPS' },
  { id: '4k-randread-qd64', label: '4 KiB random read, QD 64', rw: 'randread', bs: K, qd: 64, unit: 'IOPS' },
  { id: '4k-randwrite-qd16', label: '4 KiB random write, QD 16', rw: 'randwrite', bs: K, qd: 16, unit: 'IOPS' },
  { id: '1m-read-qd16', label: '1 MiB sequential read, QD 16', rw: 'read', bs: M, qd: 16, unit: 'MiB/s' },
  { id: '1m-write-qd16', label: '1 MiB sequential write, QD 16', rw: 'write', bs: M, qd: 16, unit: 'MiB/s' }
]

/** Through FUSE: fio with libaio and direct=1 on the mounted file. */
export const FUSE_ROWS: readonly Row[] = [
  { id: 'fuse-4k-randread-4x1', label: 'FUSE 4 KiB random read, 4 jobs × QD 1', rw: 'randread', bs: K, qd: 1, jobs: 4, unit: 'IOPS' },
  { id: 'fuse-4k-randread-4x16', label: 'FUSE 4 KiB random read, 4 jobs × QD 16', rw: 'randread', bs: K, qd: 16, jobs: 4, unit: 'IOPS' },
  { id: 'fuse-1m-read-qd16', label: 'FUSE 1 MiB sequential read, QD 16', rw: 'read', bs: M, qd: 16, unit: 'MiB/s' },
  { id: 'fuse-1m-write-qd16', label: 'FUSE 1 MiB sequential write, QD 16', rw: 'write', bs: M, qd: 16, unit: 'MiB/s' }
]

/** The result of one timed run. */
export interface Sample {
  /** IOPS or MiB/s, per the row's unit. */
  readonly value: number
  /** Peak resident memory of the client process, MiB, when known. */
  readonly rssMiB?: number
}

export function toValue (row: Row, ops: number, seconds: number): number {
  return row.unit === 'IOPS' ? ops / seconds : (ops * row.bs) / M / seconds
}
