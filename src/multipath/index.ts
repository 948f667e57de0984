export { PathSet, type Failback, type PathChange, type PathSelector, type PathState, type PathStatus } from './path-set.ts'
export { PathChecker } from './checker.ts'
export { digestOf, identityProblem, type PathIdentity } from './identity.ts'
