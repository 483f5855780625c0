// Type parsers for `pgdbpool/pg`: the pg-types 2 registry node-postgres uses (the same object,
// when `pg` is installed, so `types.setTypeParser` done for pg applies here too), and which
// result columns may keep the core's fast payloads.
//
// The core decodes result cells itself (binary format, tight loop) into exactly what pg's stock
// parsers make of the server's text. A column keeps that fast payload only while the parser in
// force for its type (query > client > global, as in pg) is pg-types' own; for any other column
// the core sends PostgreSQL's text and the parser in force gets it, as in pg.

import { dirname, join } from 'node:path'

export type TypeParser = (value: any) => any

/** What pg accepts as `types`: anything with pg-types' `getTypeParser`. */
export interface TypeSource {
  getTypeParser(oid: number, format?: string): TypeParser
}

/** The pg-types 2 module (`require('pg').types`). */
export interface PgTypes extends TypeSource {
  setTypeParser(oid: number, format: string | TypeParser, parseFn?: TypeParser): void
  arrayParser: unknown
  builtins: Record<string, number>
}

/** node-postgres itself, when the application has it installed. */
export const realPg: any = (() => {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require('pg')
  } catch {
    return null
  }
})()

/** Where the registry's module lives, so its pristine parsers can be read from the same files. */
function typesPath(): string {
  try {
    if (realPg) return require.resolve('pg-types', { paths: [dirname(require.resolve('pg'))] })
  } catch {
    // fall through to our own
  }
  return require.resolve('pg-types')
}

const path = typesPath()
// eslint-disable-next-line @typescript-eslint/no-require-imports
export const types: PgTypes = realPg?.types ?? require(path)

/** pg-types' parser for a type no parser is registered for: `String(value)`. */
export const noParse: TypeParser = types.getTypeParser(0, 'text')

/** pg-types' own text parsers, by OID: the types whose columns may keep the fast payload. */
const pristine = new Map<number, TypeParser>()
try {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const textParsers = require(join(dirname(path), 'lib', 'textParsers'))
  textParsers.init((oid: number, parser: TypeParser) => pristine.set(oid, parser))
} catch {
  // An unexpected layout: no column keeps the fast payload (every one is parsed from text).
}

// json and jsonb register a fresh `JSON.parse.bind(JSON)` whenever the parsers are set up: the
// registry's own ones, as found now, are pg-types' own.
for (const oid of [114, 3802]) {
  const loaded = types.getTypeParser(oid, 'text')
  if (loaded.name === 'bound parse') pristine.set(oid, loaded)
}

/** Whether `parser` is pg-types' own for `oid` (so the core's payload equals its output). */
function isStock(oid: number, parser: TypeParser): boolean {
  return parser === pristine.get(oid)
}

const CANDIDATES = [...pristine.keys()].sort((a, b) => a - b)

// Changes to the global registry bump a version, so the fast set of queries that use it is
// computed once per change, not per query.
let globalVersion = 0
let versioned = false
try {
  const original = types.setTypeParser
  const wrapped = function (this: unknown, ...args: unknown[]) {
    globalVersion++
    return (original as (...a: unknown[]) => void).apply(this, args)
  }
  types.setTypeParser = wrapped as PgTypes['setTypeParser']
  versioned = types.setTypeParser === (wrapped as unknown)
} catch {
  versioned = false
}

/** pg's TypeOverrides: a client's own parsers in front of a source (the registry by default). */
export class TypeOverrides implements TypeSource {
  readonly #base: TypeSource
  readonly #text = new Map<number, TypeParser>()
  readonly #binary = new Map<number, TypeParser>()
  /** Bumped on every change. */
  version = 0

  constructor(base?: TypeSource) {
    this.#base = base ?? types
  }

  get empty(): boolean {
    return this.#text.size === 0 && this.#base === types
  }

  setTypeParser(oid: number, format: string | TypeParser, parseFn?: TypeParser): void {
    if (typeof format === 'function') {
      parseFn = format
      format = 'text'
    }
    ;(format === 'binary' ? this.#binary : this.#text).set(oid, parseFn as TypeParser)
    this.version++
  }

  getTypeParser(oid: number, format: string = 'text'): TypeParser {
    const own = (format === 'binary' ? this.#binary : this.#text).get(oid)
    return own ?? this.#base.getTypeParser(oid, format)
  }
}

/** The encoded fast set of one type source: `u32 count | u32 oid...`, for the core. */
export interface FastSet {
  chunk: Buffer
  /** Candidates whose parser is not the stock one: their columns come as text, for this parser. */
  parsers: Map<number, TypeParser>
}

function compute(source: TypeSource): FastSet {
  const fast: number[] = []
  const parsers = new Map<number, TypeParser>()
  for (const oid of CANDIDATES) {
    const parser = source.getTypeParser(oid, 'text')
    if (isStock(oid, parser)) fast.push(oid)
    else parsers.set(oid, parser)
  }
  const chunk = Buffer.allocUnsafe(4 + 4 * fast.length)
  chunk.writeUInt32BE(fast.length, 0)
  for (const [i, oid] of fast.entries()) chunk.writeUInt32BE(oid, 4 + 4 * i)
  return { chunk, parsers }
}

let globalSet: FastSet | undefined
let globalSetVersion = -1
const bySource = new WeakMap<object, { version: number; own: number; set: FastSet }>()

/**
 * The fast set for a statement whose parsers come from `source` (a query's `types`, else the
 * client's overrides, else the registry).
 */
export function fastSet(source: TypeSource): FastSet {
  if (source === types || (source instanceof TypeOverrides && source.empty)) {
    if (!versioned || globalSetVersion !== globalVersion || globalSet === undefined) {
      globalSet = compute(types)
      globalSetVersion = globalVersion
    }
    return globalSet
  }
  const own = source instanceof TypeOverrides ? source.version : 0
  const cached = bySource.get(source)
  if (versioned && cached !== undefined && cached.version === globalVersion && cached.own === own) return cached.set
  const set = compute(source)
  bySource.set(source, { version: globalVersion, own, set })
  return set
}
