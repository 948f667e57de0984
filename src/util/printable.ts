/**
 * Text from someone we do not trust (a server's description, export names, error messages),
 * made safe to print on a terminal or write as one log line: control characters (C0, DEL, C1)
 * and the bidirectional overrides that reorder what a reader sees ("Trojan Source") become
 * visible escapes. Everything else, including non-ASCII text, is kept as it is.
 *
 *   a description holding a real newline and ESC [2J   →   disk\n2024... \x1b[2J  (one line, nothing run)
 */

const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g

const NAMED: Readonly<Record<string, string>> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' }

function escape (ch: string): string {
  const named = NAMED[ch]
  if (named !== undefined) return named
  const code = ch.charCodeAt(0)
  return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`
}

export function printable (text: string): string {
  return text.replace(UNSAFE, escape)
}

const UNSAFE_BUT_LINES = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g

/**
 * printable() for text that is meant to have several lines (a control reply, a table): newlines
 * and tabs are kept, every other control character is escaped. The client side of `ctl` and the
 * CLI print daemon replies and errors through it, whatever the daemon escaped already.
 */
export function printableLines (text: string): string {
  return text.replace(UNSAFE_BUT_LINES, escape)
}
