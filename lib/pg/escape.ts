// Identifier and literal quoting, as node-postgres's escapeIdentifier / escapeLiteral do it.

/** Quotes an identifier: `"a""b"`. */
export function escapeIdentifier(name: string): string {
  return `"${String(name).replace(/"/g, '""')}"`
}

/** Quotes a literal: `'it''s'`, and ` E'a\\b'` (with a leading space) when it holds a backslash. */
export function escapeLiteral(text: string): string {
  let backslash = false
  let out = "'"
  for (const c of String(text)) {
    if (c === "'") out += "''"
    else if (c === '\\') {
      out += '\\\\'
      backslash = true
    } else out += c
  }
  out += "'"
  return backslash ? ` E${out}` : out
}
