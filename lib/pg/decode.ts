// Results of pg-mode statements (crate/src/pgcompat.rs): the pool's result layout, read by its own
// decoder, followed by a trailer with pg's field metadata. Columns the core sent as text go
// through the type parser in force.

import { decodeResult, type RowMode } from '../codec'
import { type FastSet, type TypeParser, type TypeSource, noParse } from './types'

/** One field of a result, as pg describes it. */
export interface FieldDef {
  name: string
  tableID: number
  columnID: number
  dataTypeID: number
  dataTypeSize: number
  dataTypeModifier: number
  format: 'text' | 'binary'
}

/** A result, with pg's own properties. */
export class Result<R = any> {
  command: string | null
  rowCount: number | null
  oid: number | null
  rows: R[]
  fields: FieldDef[]
  rowAsArray: boolean
  constructor(command: string | null, rowCount: number | null, rows: R[], fields: FieldDef[], rowAsArray: boolean) {
    this.command = command
    this.rowCount = rowCount
    this.oid = command === 'INSERT' ? 0 : null
    this.rows = rows
    this.fields = fields
    this.rowAsArray = rowAsArray
  }
}

const PG_DEFAULTS = { int8: 'string', dates: 'date' } as const
const ALL_TEXT = 1

function decodeOne(buf: Buffer, rowMode: RowMode, source: TypeSource, fast: FastSet): Result {
  const end = buf.length
  const trailerLen = buf.readUInt32BE(end - 4)
  const t = end - 4 - trailerLen
  const allText = (buf[t] & ALL_TEXT) !== 0
  const base = decodeResult<any>(buf.subarray(0, t), rowMode, PG_DEFAULTS)
  const n = base.fields.length
  const fields: FieldDef[] = new Array(n)
  let columns: number[] | undefined
  let parsers: TypeParser[] | undefined
  for (let c = 0, p = t + 1; c < n; c++, p += 13) {
    const { name, dataTypeID } = base.fields[c]
    fields[c] = {
      name,
      tableID: buf.readUInt32BE(p),
      columnID: buf.readInt16BE(p + 4),
      dataTypeID,
      dataTypeSize: buf.readInt16BE(p + 6),
      dataTypeModifier: buf.readInt32BE(p + 8),
      format: 'text',
    }
    if (!allText && buf[p + 12] === 1) continue
    const parser = fast.parsers.get(dataTypeID) ?? source.getTypeParser(dataTypeID, 'text')
    if (parser === noParse) continue
    ;(columns ??= []).push(c)
    ;(parsers ??= []).push(parser)
  }
  const rows = base.rows
  if (columns !== undefined && parsers !== undefined) {
    if (rowMode === 'array') {
      for (const row of rows as unknown[][]) {
        for (let i = 0; i < columns.length; i++) {
          const v = row[columns[i]]
          if (v !== null) row[columns[i]] = parsers[i](v as string)
        }
      }
    } else {
      // With duplicate names the last column's value is the one a row holds.
      const last = new Map<string, number>()
      for (let c = 0; c < n; c++) last.set(fields[c].name, c)
      const names: string[] = []
      const ps: TypeParser[] = []
      columns.forEach((c, i) => {
        if (last.get(fields[c].name) === c) {
          names.push(fields[c].name)
          ps.push(parsers![i])
        }
      })
      for (const row of rows as Record<string, unknown>[]) {
        for (let i = 0; i < names.length; i++) {
          const v = row[names[i]]
          if (v !== null) row[names[i]] = ps[i](v as string)
        }
      }
    }
  }
  return new Result(base.command || null, base.rowCount, rows, fields, rowMode === 'array')
}

/**
 * Decodes a pg-mode answer: one result, or (a script of several statements) pg's array of
 * results — a script with a single statement gives that one result.
 */
export function decodePg(buf: Buffer, rowMode: RowMode, source: TypeSource, fast: FastSet): Result | Result[] {
  if (buf[0] !== 2) return decodeOne(buf, rowMode, source, fast)
  const count = buf.readUInt32BE(1)
  const results: Result[] = []
  let pos = 5
  for (let i = 0; i < count; i++) {
    const len = buf.readUInt32BE(pos)
    results.push(decodeOne(buf.subarray(pos + 4, pos + 4 + len), rowMode, source, fast))
    pos += 4 + len
  }
  if (results.length === 0) return new Result(null, null, [], [], rowMode === 'array')
  if (results.length === 1) return results[0]
  return results
}
