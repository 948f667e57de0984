/**
 * A command line that cannot be run as given, found after commander parsed it (flags that do
 * not go together): main() prints it as commander's own usage errors are printed, and exits 2.
 */
export class UsageError extends Error {
  override readonly name = 'UsageError'
}
