/**
 * Shared assertions: errors by their stable code, within a bound; and no unhandled rejection
 * anywhere in the file (checked once every test of the file has run).
 */
import assert from 'node:assert/strict'
import { after } from 'node:test'

const unhandled: unknown[] = []
process.on('unhandledRejection', (reason) => { unhandled.push(reason) })
after(() => {
  assert.deepEqual(unhandled, [], 'unhandled promise rejections')
})

/**
 * Marks a promise as handled where it is created, so that a test may await its rejection
 * later (after other awaits) without it counting as unhandled meanwhile. Returns it as is.
 */
export function handled<T> (promise: Promise<T>): Promise<T> {
  promise.catch(() => {})
  return promise
}

/** Fails the test if `promise` has not settled within `ms`. */
export async function within<T> (promise: Promise<T>, ms: number, what = 'operation'): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const bound = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => { reject(new Error(`${what} did not settle within ${ms} ms`)) }, ms)
  })
  try {
    return await Promise.race([promise, bound])
  } finally {
    clearTimeout(timer)
  }
}

/** Asserts that `promise` rejects within `ms` with an error whose `code` is `code`. */
export async function rejectsWithCode (promise: Promise<unknown>, code: string, ms = 5000, match?: RegExp): Promise<Error> {
  let caught: unknown
  try {
    await within(promise, ms)
  } catch (err) {
    caught = err
  }
  assert.ok(caught instanceof Error, `expected a rejection with code ${code}, got ${String(caught)}`)
  assert.equal((caught as { code?: string }).code, code, `expected code ${code}, got ${(caught as { code?: string }).code}: ${caught.message}`)
  if (match !== undefined) assert.match(caught.message, match)
  return caught
}

/** Counts the process's live handles of the kinds a client could leak. */
export function liveHandles (): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const kind of process.getActiveResourcesInfo()) {
    if (['PipeWrap', 'TCPWrap', 'Timeout', 'TCPSocketWrap', 'PipeConnectWrap', 'TCPConnectWrap'].includes(kind)) {
      counts[kind] = (counts[kind] ?? 0) + 1
    }
  }
  return counts
}
