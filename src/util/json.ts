/** JSON with bigints as numbers where exact, else as strings. */
export function toJson (value: unknown, indent = 2): string {
  return JSON.stringify(value, (_key, v: unknown) => {
    if (typeof v !== 'bigint') return v
    return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString()
  }, indent)
}

/** 67108864 → "64M", as nbdinfo shows sizes. */
export function humanSize (bytes: bigint | number): string {
  const units = ['', 'K', 'M', 'G', 'T', 'P', 'E']
  let value = Number(bytes)
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit++
  }
  const text = Number.isInteger(value) ? String(value) : value.toFixed(1)
  return unit === 0 ? `${bytes}` : `${text}${units[unit]}`
}
