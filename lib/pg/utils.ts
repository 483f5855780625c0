// Parameters and escaping as node-postgres does them (pg/lib/utils.js's behaviour, our code).

import { dateToString } from '../codec'
import { defaults } from './defaults'

function pad(n: number, width = 2): string {
  return String(n).padStart(width, '0')
}

/** A Date in UTC (`defaults.parseInputDatesAsUTC`). */
function dateToStringUTC(date: Date): string {
  let year = date.getUTCFullYear()
  const bc = year < 1
  if (bc) year = Math.abs(year) + 1
  const out = `${pad(year, 4)}-${pad(date.getUTCMonth() + 1)}-${pad(date.getUTCDate())}T${pad(date.getUTCHours())}:${pad(date.getUTCMinutes())}:${pad(date.getUTCSeconds())}.${pad(date.getUTCMilliseconds(), 3)}+00:00`
  return bc ? `${out} BC` : out
}

function escapeElement(text: string): string {
  return `"${text.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`
}

/** A JS array as a PostgreSQL array literal, as pg writes it. */
function arrayString(values: readonly unknown[]): string {
  let out = '{'
  for (let i = 0; i < values.length; i++) {
    if (i > 0) out += ','
    const v = values[i]
    if (v === null || v === undefined) out += 'NULL'
    else if (Array.isArray(v)) out += arrayString(v)
    else if (ArrayBuffer.isView(v)) {
      const bytes = Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength)
      out += `\\\\x${bytes.toString('hex')}`
    } else out += escapeElement(prepareValue(v) as string)
  }
  return `${out}}`
}

/**
 * A query parameter as pg sends it: `null` for null/undefined, a Buffer for binary data, else
 * text (Dates with their offset, arrays as array literals, `toPostgres()` honoured, other objects
 * as JSON).
 */
export function prepareValue(value: unknown, seen?: unknown[]): string | Buffer | null {
  if (value === null || value === undefined) return null
  if (typeof value === 'object') {
    if (Buffer.isBuffer(value)) return value
    if (ArrayBuffer.isView(value)) return Buffer.from(value.buffer, value.byteOffset, value.byteLength)
    if (value instanceof Date) return defaults.parseInputDatesAsUTC ? dateToStringUTC(value) : dateToString(value)
    if (Array.isArray(value)) return arrayString(value)
    const custom = (value as { toPostgres?: (prepare: typeof prepareValue) => unknown }).toPostgres
    if (typeof custom === 'function') {
      const chain = seen ?? []
      if (chain.includes(value)) throw new Error(`circular reference detected while preparing "${String(value)}" for query`)
      chain.push(value)
      return prepareValue(custom.call(value, prepareValue), chain)
    }
    return JSON.stringify(value)
  }
  return (value as { toString(): string }).toString()
}

export { escapeIdentifier, escapeLiteral } from './escape'
