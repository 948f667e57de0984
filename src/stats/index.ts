export { ClientStats } from './client-stats.ts'
export type { StatsSnapshot } from './client-stats.ts'
