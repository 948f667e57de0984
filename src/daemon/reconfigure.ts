/**
 * What a reconfigure does, decided from what runs and what the config now says (pure: the
 * daemon carries the plan out). A mount is known by its file:
 *
 *   in the config, not running (or FAILED)      add
 *   running from the config, gone from it       remove (drain, flush, unmount; a busy one stays)
 *   URI or a setting a mount cannot change live
 *   (readonly, name, options, connections, tls)  replace (remove, then add)
 *   only live settings changed                  live (applied to the running client)
 *   nothing changed                             untouched: not even looked at again
 *
 * Mounts added over the control socket or by `nbdts mount` are not the config's: a config
 * without them removes nothing, and a config that names one adopts it (then it is the
 * config's, compared as above). Their [defaults]-derived live settings follow the config.
 */
import { LIVE_MOUNT_KEYS, MOUNT_KEYS, type MountSettings } from '../control/words.ts'
import { resolve, type DaemonConfig, type MountSection, type ResolvedMountSettings } from './config.ts'
import type { MountOrigin, MountState } from './mount-runtime.ts'

export interface RunningMount {
  readonly file: string
  readonly uri: string
  readonly origin: MountOrigin
  readonly own: MountSettings
  readonly settings: ResolvedMountSettings
  readonly state: MountState
}

export interface PlannedMount {
  readonly section: MountSection
  readonly settings: ResolvedMountSettings
}

export interface ReconfigurePlan {
  readonly add: readonly PlannedMount[]
  readonly remove: readonly string[]
  readonly replace: readonly PlannedMount[]
  readonly live: ReadonlyArray<{ readonly file: string, readonly own: MountSettings, readonly settings: ResolvedMountSettings, readonly adopt: boolean, readonly changed: readonly string[] }>
  readonly untouched: readonly string[]
}

const LIVE_FIELDS = new Set<string>(LIVE_MOUNT_KEYS.map((k) => MOUNT_KEYS[k].field))

function fields (s: MountSettings): Record<string, unknown> {
  return Object.fromEntries(Object.entries(s)) as Record<string, unknown>
}

/** The fields (kebab-case keys) whose values differ, live ones and the others apart. */
function differences (a: ResolvedMountSettings, b: ResolvedMountSettings): { live: string[], other: string[] } {
  const live: string[] = []
  const other: string[] = []
  const x0 = fields(a)
  const y0 = fields(b)
  for (const [key, spec] of Object.entries(MOUNT_KEYS)) {
    // Another name for a field (no-path-retry): the field is reported once, by its own name.
    if ('alias' in spec) continue
    const x = x0[spec.field]
    const y = y0[spec.field]
    if (JSON.stringify(x) === JSON.stringify(y)) continue
    if (LIVE_FIELDS.has(spec.field)) live.push(key)
    else other.push(key)
  }
  return { live, other }
}

export function planReconfigure (running: readonly RunningMount[], next: DaemonConfig): ReconfigurePlan {
  const add: PlannedMount[] = []
  const remove: string[] = []
  const replace: PlannedMount[] = []
  const live: Array<ReconfigurePlan['live'][number]> = []
  const untouched: string[] = []
  const byFile = new Map(running.map((m) => [m.file, m]))
  for (const section of next.mounts.values()) {
    const settings = resolve(next.defaults, section.settings)
    const now = byFile.get(section.file)
    if (now === undefined || now.state === 'failed') {
      add.push({ section, settings })
      continue
    }
    if (now.state === 'removing') {
      // Its removal finishes first; the next reconfigure adds it again.
      untouched.push(section.file)
      continue
    }
    const diff = differences(now.settings, settings)
    if (now.uri !== section.uri || diff.other.length > 0) replace.push({ section, settings })
    else if (diff.live.length > 0 || now.origin !== 'config') live.push({ file: section.file, own: section.settings, settings, adopt: now.origin !== 'config', changed: diff.live })
    else untouched.push(section.file)
  }
  for (const now of running) {
    if (next.mounts.has(now.file)) continue
    if (now.origin === 'config') {
      if (now.state !== 'removing') remove.push(now.file)
      continue
    }
    // Not the config's: only [defaults]' live settings reach it.
    const settings = resolve(next.defaults, now.own)
    const diff = differences(now.settings, settings)
    const changed = diff.live
    if (changed.length > 0 && now.state === 'up') {
      // Only the live settings move; the rest stays as the mount was made.
      const merged: ResolvedMountSettings = { ...now.settings, reconnectDelay: settings.reconnectDelay, openTimeout: settings.openTimeout, maxInFlight: settings.maxInFlight }
      live.push({ file: now.file, own: now.own, settings: merged, adopt: false, changed })
    } else {
      untouched.push(now.file)
    }
  }
  return { add, remove, replace, live, untouched }
}
