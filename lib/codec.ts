// Both halves of the boundary format (see crate/src/codec/): parameters go to Rust as one
// Buffer, a result comes back as one Buffer and is turned into rows here in a tight loop.

import type { TypeOptions } from './config'
import { DBQueryError } from './errors'

export interface FieldInfo {
  name: string
  dataTypeID: number
}

export interface QueryResult<R = Record<string, unknown>> {
  rows: R[]
  rowCount: number | null
  command: string
  fields: FieldInfo[]
}

export type RowMode = 'object' | 'array'

const enum Kind {
  Bool = 1,
  Int2 = 2,
  Int4 = 3,
  Oid = 4,
  Float4 = 5,
  Float8 = 6,
  Text = 7,
  Json = 8,
  Bytea = 9,
  Timestamptz = 10,
  Timestamp = 11,
  Date = 12,
  Int8 = 13,
  Interval = 14,
  Point = 15,
  Array = 16,
  Circle = 17,
  Number = 18,
}

const PG_EPOCH_MS = 946_684_800_000

// Node's own decoders behind `buf.toString(encoding, start, end)`: that wrapper's argument
// checks cost as much as decoding a short cell. Picked once; runtimes without them get
// `toString`. Buffer.prototype itself is left alone.
type Slice = (this: Buffer, start: number, end: number) => string
const bufferMethods = Buffer.prototype as unknown as { utf8Slice?: Slice; latin1Slice?: Slice }
const utf8Slice: Slice =
  typeof bufferMethods.utf8Slice === 'function'
    ? bufferMethods.utf8Slice
    : function (this: Buffer, start: number, end: number) {
        return this.toString('utf8', start, end)
      }
const latin1Slice: Slice =
  typeof bufferMethods.latin1Slice === 'function'
    ? bufferMethods.latin1Slice
    : function (this: Buffer, start: number, end: number) {
        return this.toString('latin1', start, end)
      }

// ---------- parameters ----------

function pad(n: number, width = 2): string {
  return String(n).padStart(width, '0')
}

/** node-postgres's text form of a Date: local time with its UTC offset (` BC` before year 1). */
export function dateToString(date: Date): string {
  let offset = -date.getTimezoneOffset()
  let year = date.getFullYear()
  const bc = year < 1
  if (bc) year = Math.abs(year) + 1
  let out = `${pad(year, 4)}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`
  if (offset < 0) {
    out += '-'
    offset *= -1
  } else {
    out += '+'
  }
  out += `${pad(Math.floor(offset / 60))}:${pad(offset % 60)}`
  return bc ? `${out} BC` : out
}

function arrayLiteral(values: unknown[]): string {
  const parts = values.map((v) => {
    if (v === null || v === undefined) return 'NULL'
    if (Array.isArray(v)) return arrayLiteral(v)
    if (Buffer.isBuffer(v) || v instanceof Uint8Array) return `"\\\\x${Buffer.from(v).toString('hex')}"`
    const text = String(toText(v))
    return `"${text.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`
  })
  return `{${parts.join(',')}}`
}

/** A JS value as PostgreSQL text input, following node-postgres's prepareValue. */
function toText(value: unknown): string | Buffer | null {
  switch (typeof value) {
    case 'string':
      return value
    case 'number':
    case 'bigint':
    case 'boolean':
      return String(value)
    case 'undefined':
      return null
    case 'object': {
      if (value === null) return null
      if (Buffer.isBuffer(value)) return value
      if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength)
      if (value instanceof Date) return dateToString(value)
      if (Array.isArray(value)) return arrayLiteral(value)
      const custom = (value as { toPostgres?: (prepare: (v: unknown) => unknown) => unknown }).toPostgres
      if (typeof custom === 'function') return toText(custom.call(value, toText))
      return JSON.stringify(value)
    }
    default:
      throw new TypeError(`cannot bind a ${typeof value} as a query parameter`)
  }
}

/** A growable byte buffer that operations are written into back to back. */
export class ByteWriter {
  buf = Buffer.allocUnsafe(16 * 1024)
  pos = 0

  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return
    let size = this.buf.length * 2
    while (size < this.pos + n) size *= 2
    const bigger = Buffer.allocUnsafe(size)
    this.buf.copy(bigger, 0, 0, this.pos)
    this.buf = bigger
  }

  u8(v: number): void {
    this.ensure(1)
    this.buf[this.pos++] = v
  }

  u32(v: number): void {
    this.ensure(4)
    this.buf.writeUInt32BE(v, this.pos)
    this.pos += 4
  }

  /** `u32 len | UTF-8 bytes`. */
  text(s: string): void {
    this.ensure(4 + s.length * 3)
    const len = this.buf.write(s, this.pos + 4)
    this.buf.writeUInt32BE(len, this.pos)
    this.pos += 4 + len
  }

  /** Takes what was written and starts over. */
  take(): Buffer {
    const out = this.buf.subarray(0, this.pos)
    this.buf = Buffer.allocUnsafe(this.buf.length)
    this.pos = 0
    return out
  }
}

/**
 * Writes `u32 len | u32 count`, then per parameter `u8 tag (0 null, 1 text, 2 binary) | u32 len |
 * bytes` (the outer length lets the core slice the parameters off without parsing them).
 */
export function writeParams(w: ByteWriter, params: readonly unknown[] | undefined): void {
  const n = params === undefined ? 0 : params.length
  if (n === 0) {
    w.u32(0)
    return
  }
  const values: Array<string | Buffer | null> = new Array(n)
  let size = 4
  for (let i = 0; i < n; i++) {
    const v = toText(params![i])
    values[i] = v
    size += 5 + (v === null ? 0 : typeof v === 'string' ? v.length * 3 : v.length)
  }
  w.ensure(4 + size)
  const out = w.buf
  const start = w.pos
  let pos = start + 4
  out.writeUInt32BE(n, pos)
  pos += 4
  for (let i = 0; i < n; i++) {
    const v = values[i]
    if (v === null) {
      out[pos] = 0
      out.writeUInt32BE(0, pos + 1)
      pos += 5
    } else if (typeof v === 'string') {
      out[pos] = 1
      const len = out.write(v, pos + 5)
      out.writeUInt32BE(len, pos + 1)
      pos += 5 + len
    } else {
      out[pos] = 2
      out.writeUInt32BE(v.length, pos + 1)
      v.copy(out, pos + 5)
      pos += 5 + v.length
    }
  }
  out.writeUInt32BE(pos - start - 4, start)
  w.pos = pos
}

// ---------- results ----------

/**
 * node-postgres's interval value (the postgres-interval package): the non-zero parts as own
 * properties, with the same methods, so it also works as a query parameter.
 */
export class PostgresInterval {
  declare years?: number
  declare months?: number
  declare days?: number
  declare hours?: number
  declare minutes?: number
  declare seconds?: number
  declare milliseconds?: number

  /** PostgreSQL input text, e.g. `1 years 2 days 3.5 seconds`. */
  toPostgres(): string {
    const parts = (['seconds', 'minutes', 'hours', 'days', 'months', 'years'] as const).filter((p) => Object.hasOwn(this, p))
    if (this.milliseconds && !parts.includes('seconds')) parts.push('seconds')
    if (parts.length === 0) return '0'
    return parts
      .map((p) => {
        let value: number | string = this[p] || 0
        if (p === 'seconds' && this.milliseconds) value = (value + this.milliseconds / 1000).toFixed(6).replace(/\.?0+$/, '')
        return `${value} ${p}`
      })
      .join(' ')
  }

  /** ISO 8601 duration, e.g. `P1Y0M2DT0H0M3.5S`. */
  toISO(): string {
    const part = (p: 'years' | 'months' | 'days' | 'hours' | 'minutes' | 'seconds', unit: string): string => {
      let value: number | string = this[p] || 0
      if (p === 'seconds' && this.milliseconds) value = (value + this.milliseconds / 1000).toFixed(6).replace(/0+$/, '')
      return `${value}${unit}`
    }
    return `P${part('years', 'Y')}${part('months', 'M')}${part('days', 'D')}T${part('hours', 'H')}${part('minutes', 'M')}${part('seconds', 'S')}`
  }

  toISOString(): string {
    return this.toISO()
  }
}

/**
 * Splits i64 microseconds (two big-endian words at `pos`) into whole seconds (floored) and the
 * remaining microseconds (0..999999), exactly: a double cannot hold every i64.
 */
function splitMicros(buf: Buffer, pos: number, out: { us: number }): number {
  const hi = buf.readInt32BE(pos)
  // hi * 2^32 + lo = 1e6 * (hi * 4294) + (hi * 967296 + lo), the second term below 2^53
  const rest = hi * 967296 + buf.readUInt32BE(pos + 4)
  const q = Math.floor(rest / 1_000_000)
  out.us = rest - q * 1_000_000
  return hi * 4294 + q
}

function isInfinity(buf: Buffer, pos: number): number {
  const hi = buf.readInt32BE(pos)
  const lo = buf.readUInt32BE(pos + 4)
  if (hi === 0x7fffffff && lo === 0xffffffff) return 1
  if (hi === -0x80000000 && lo === 0) return -1
  return 0
}

/**
 * PostgreSQL's ISO text of a UTC instant: `YYYY-MM-DD[ HH:MM:SS[.ffffff]<suffix>]`, years ≤ 0
 * as BC. `micros` are the microseconds within the second.
 */
function isoText(ms: number, micros: number, withTime: boolean, suffix: string): string {
  const d = new Date(ms)
  const year = d.getUTCFullYear()
  let out = `${pad(year <= 0 ? 1 - year : year, 4)}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`
  if (withTime) {
    out += ` ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`
    if (micros) out += `.${pad(micros, 6).replace(/0+$/, '')}`
    out += suffix
  }
  return year <= 0 ? `${out} BC` : out
}

/** A local-time Date from wall-clock fields, as node-postgres (postgres-date) builds it. */
function localDate(u: Date): Date {
  const year = u.getUTCFullYear()
  const date = new Date(year, u.getUTCMonth(), u.getUTCDate(), u.getUTCHours(), u.getUTCMinutes(), u.getUTCSeconds(), u.getUTCMilliseconds())
  if (year >= 0 && year < 100) date.setFullYear(year)
  return date
}

/** An interval as node-postgres returns it (infinite ones, PostgreSQL 17+, come out empty as there). */
function interval(buf: Buffer, pos: number): PostgresInterval {
  const out = new PostgresInterval()
  const days = buf.readInt32BE(pos + 8)
  const months = buf.readInt32BE(pos + 12)
  if ((months === 0x7fffffff && days === 0x7fffffff) || (months === -0x80000000 && days === -0x80000000)) return out
  const years = Math.trunc(months / 12)
  if (years) out.years = years
  if (months % 12) out.months = months % 12
  if (days) out.days = days
  const sub = { us: 0 }
  let secs = splitMicros(buf, pos, sub)
  let us = sub.us
  if (secs < 0 && us > 0) {
    // Truncate toward zero like PostgreSQL: -1.5 s is -1 s and -500000 µs.
    secs += 1
    us -= 1_000_000
  }
  const hours = Math.trunc(secs / 3600)
  secs -= hours * 3600
  const minutes = Math.trunc(secs / 60)
  const seconds = secs - minutes * 60
  if (hours) out.hours = hours
  if (minutes) out.minutes = minutes
  if (seconds) out.seconds = seconds
  if (us) out.milliseconds = us / 1000
  return out
}

/** A result Buffer that does not hold what its header says (truncated, corrupted). */
class Malformed extends Error {}

function malformed(what: string): never {
  throw new Malformed(what)
}

/** A fixed-size value of the wrong size: it would read into the next one. */
function badSize(kind: number, len: number): never {
  malformed(`a cell of ${len} bytes for a value of kind ${kind}`)
}

class Decoder {
  /** Scratch output of splitMicros. */
  readonly sub = { us: 0 }

  constructor(
    private readonly buf: Buffer,
    private readonly types: Required<TypeOptions>,
  ) {}

  /** The value of one cell of `len` bytes at `pos` (within the buffer: the caller checked). */
  value(kind: number, pos: number, len: number): unknown {
    const buf = this.buf
    switch (kind) {
      case Kind.Bool:
        if (len !== 1) badSize(kind, len)
        return buf[pos] !== 0
      case Kind.Int2:
        if (len !== 2) badSize(kind, len)
        return buf.readInt16BE(pos)
      case Kind.Int4:
        if (len !== 4) badSize(kind, len)
        return buf.readInt32BE(pos)
      case Kind.Oid:
        if (len !== 4) badSize(kind, len)
        return buf.readUInt32BE(pos)
      case Kind.Float4:
      case Kind.Float8:
        if (len !== 8) badSize(kind, len)
        return buf.readDoubleBE(pos)
      case Kind.Text:
        return utf8Slice.call(buf, pos, pos + len)
      case Kind.Json:
        return JSON.parse(utf8Slice.call(buf, pos, pos + len))
      case Kind.Bytea:
        return Buffer.from(buf.subarray(pos, pos + len))
      case Kind.Int8: {
        const text = latin1Slice.call(buf, pos, pos + len)
        return this.types.int8 === 'string' ? text : this.types.int8 === 'bigint' ? BigInt(text) : Number(text)
      }
      case Kind.Timestamptz:
      case Kind.Timestamp: {
        if (len !== 8) badSize(kind, len)
        const inf = isInfinity(buf, pos)
        if (inf !== 0) return this.types.dates === 'string' ? (inf > 0 ? 'infinity' : '-infinity') : inf * Infinity
        const ms = splitMicros(buf, pos, this.sub) * 1000 + Math.floor(this.sub.us / 1000) + PG_EPOCH_MS
        if (this.types.dates === 'string') return isoText(ms, this.sub.us, true, kind === Kind.Timestamptz ? '+00' : '')
        return kind === Kind.Timestamptz ? new Date(ms) : localDate(new Date(ms))
      }
      case Kind.Date: {
        if (len !== 4) badSize(kind, len)
        const days = buf.readInt32BE(pos)
        if (days === 0x7fffffff) return this.types.dates === 'string' ? 'infinity' : Infinity
        if (days === -0x80000000) return this.types.dates === 'string' ? '-infinity' : -Infinity
        const ms = days * 86_400_000 + PG_EPOCH_MS
        return this.types.dates === 'string' ? isoText(ms, 0, false, '') : localDate(new Date(ms))
      }
      case Kind.Interval:
        if (len !== 16) badSize(kind, len)
        return interval(buf, pos)
      case Kind.Point:
        if (len !== 16) badSize(kind, len)
        return { x: buf.readDoubleBE(pos), y: buf.readDoubleBE(pos + 8) }
      case Kind.Circle:
        if (len !== 24) badSize(kind, len)
        return { x: buf.readDoubleBE(pos), y: buf.readDoubleBE(pos + 8), radius: buf.readDoubleBE(pos + 16) }
      case Kind.Number:
        return parseFloat(latin1Slice.call(buf, pos, pos + len))
      case Kind.Array:
        return this.array(pos, pos + len)
      default:
        return Buffer.from(buf.subarray(pos, pos + len))
    }
  }

  /**
   * `u8 element kind | u8 ndim | i32 per dimension | elements as cells`, ending exactly at `end`.
   * The core checked the dimensions against the data; they are checked again here so that no
   * buffer can make this loop beyond its own bytes.
   */
  array(pos: number, end: number): unknown[] {
    const buf = this.buf
    if (end - pos < 2) malformed('a truncated array')
    const elemKind = buf[pos]
    const ndim = buf[pos + 1]
    pos += 2
    if (ndim === 0) {
      if (pos !== end) malformed('bytes after an empty array')
      return []
    }
    if (ndim > 6 || end - pos < 4 * ndim) malformed('an array header that does not fit')
    const dims: number[] = []
    let count = 1
    for (let d = 0; d < ndim; d++, pos += 4) {
      const n = buf.readInt32BE(pos)
      if (n < 1) malformed('an array dimension below 1')
      dims.push(n)
      count *= n
    }
    if (count * 4 > end - pos) malformed('more array elements than bytes')
    const state = { pos }
    const build = (d: number): unknown[] => {
      const out = new Array(dims[d])
      for (let i = 0; i < dims[d]; i++) {
        if (d + 1 < ndim) {
          out[i] = build(d + 1)
        } else {
          if (end - state.pos < 4) malformed('a truncated array')
          const len = buf.readInt32BE(state.pos)
          state.pos += 4
          if (len < 0) {
            out[i] = null
          } else {
            if (len > end - state.pos) malformed('an array element past its end')
            out[i] = this.value(elemKind, state.pos, len)
            state.pos += len
          }
        }
      }
      return out
    }
    const out = build(0)
    if (state.pos !== end) malformed('bytes after the last array element')
    return out
  }
}

/**
 * Turns one result Buffer into a node-postgres-shaped result. A buffer that does not hold what
 * its header says, or a value JS cannot represent (a string longer than V8 allows, JSON that
 * does not parse), is a DBQueryError that says so; no buffer makes this read past its end or
 * loop beyond its bytes.
 */
export function decodeResult<R = Record<string, unknown>>(buf: Buffer, rowMode: RowMode, types: Required<TypeOptions>): QueryResult<R> {
  try {
    return decode<R>(buf, rowMode, types)
  } catch (e) {
    throw decodeError(e)
  }
}

function decodeError(e: unknown): Error {
  if (e instanceof Malformed) return new DBQueryError(`malformed result: ${e.message}`)
  const err = e as NodeJS.ErrnoException
  if (err?.code === 'ERR_STRING_TOO_LONG' || (err instanceof RangeError && /string/i.test(err.message))) {
    return new DBQueryError(
      'a value in the result is too large for a JavaScript string (V8 allows about 512 MiB); select it in parts (substring) or as bytea',
      {},
      { cause: e },
    )
  }
  if (err instanceof SyntaxError) return new DBQueryError(`a json value in the result does not parse: ${err.message}`, {}, { cause: e })
  if (err instanceof RangeError) return new DBQueryError(`malformed result: ${err.message}`, {}, { cause: e })
  return new DBQueryError(`the result could not be decoded: ${(err as Error)?.message ?? String(e)}`, {}, { cause: e })
}

function decode<R>(buf: Buffer, rowMode: RowMode, types: Required<TypeOptions>): QueryResult<R> {
  const end = buf.length
  if (end < 18 || buf[0] !== 1) malformed('not a result (bad header)')
  const rowCount = buf.readUInt32BE(1)
  const affected = buf.readDoubleBE(5)
  const cmdLen = buf[13]
  if (14 + cmdLen + 4 > end) malformed('a truncated header')
  const command = buf.toString('latin1', 14, 14 + cmdLen)
  let pos = 14 + cmdLen
  const ncols = buf.readUInt32BE(pos)
  pos += 4
  // A column takes 9 bytes at least, a cell 4.
  if (ncols * 9 > end - pos) malformed('more columns than bytes')
  const fields: FieldInfo[] = new Array(ncols)
  const names: string[] = new Array(ncols)
  const kinds: number[] = new Array(ncols)
  let protoColumn = false
  for (let c = 0; c < ncols; c++) {
    if (end - pos < 4) malformed('a truncated column')
    const nameLen = buf.readUInt32BE(pos)
    if (nameLen > end - pos - 9) malformed('a truncated column')
    const name = buf.toString('utf8', pos + 4, pos + 4 + nameLen)
    pos += 4 + nameLen
    const oid = buf.readUInt32BE(pos)
    kinds[c] = buf[pos + 4]
    pos += 5
    names[c] = name
    fields[c] = { name, dataTypeID: oid }
    if (name === '__proto__') protoColumn = true
  }
  if (ncols > 0 && rowCount * ncols * 4 > end - pos) malformed('more rows than bytes')
  const decoder = new Decoder(buf, types)
  const rows: unknown[] = new Array(rowCount)
  const asArray = rowMode === 'array'
  // A column named __proto__ becomes an own property; assigning it would set the row's prototype.
  const byDefine = protoColumn && !asArray
  for (let r = 0; r < rowCount; r++) {
    const row: Record<string, unknown> | unknown[] = asArray ? new Array(ncols) : {}
    for (let c = 0; c < ncols; c++) {
      // Past the end, readInt32BE throws a RangeError: a malformed result too.
      const len = buf.readInt32BE(pos)
      pos += 4
      let value: unknown = null
      if (len >= 0) {
        if (len > end - pos) malformed('a cell past the end of the result')
        value = decoder.value(kinds[c], pos, len)
        pos += len
      }
      if (asArray) (row as unknown[])[c] = value
      else if (byDefine) Object.defineProperty(row, names[c], { value, writable: true, enumerable: true, configurable: true })
      else (row as Record<string, unknown>)[names[c]] = value
    }
    rows[r] = row
  }
  if (pos !== end) malformed('bytes after the last row')
  return { rows: rows as R[], rowCount: affected < 0 ? null : affected, command, fields }
}
