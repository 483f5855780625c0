'use strict'
// The type mapping, type by type, against node-postgres (`pg`, default settings) reading the same
// rows from the same server: each value as a literal column (plus NULL), in a 1-D array with a
// NULL element, in a 2-D array, as text parameters, and pg's own decoded values sent back as
// parameters — through a one-shot `query()` and through a Handler. Deliberate differences are
// asserted as documented in the README's type table.

// timestamp and date become Dates in the process's local time zone, in both libraries: use one
// with DST, a historical local-mean-time offset and a DST gap to get it wrong in.
process.env.TZ = 'Europe/Amsterdam'

const test = require('ava')
const pg = require('pg')

const lib = require('..')
const { Pool, DBQueryError, PostgresInterval } = lib
const { startServer, guardProcess, PASSWORD } = require('./helpers/pg')

guardProcess(test)

let server
const extensions = { hstore: false, citext: false, ltree: false }
/** oid → { elem, base, isArray } from pg_type. */
const catalog = new Map()
const envs = new Map()
const closers = []

test.before(async () => {
  server = await startServer({ embedded: true, flags: ['-c', 'TimeZone=UTC', '-c', 'lc_monetary=C'] })
  // A role per session time zone, so that one-shot queries run in that zone too.
  for (const zone of ZONES.slice(1)) {
    await server.sql(`CREATE ROLE ${roleOf(zone)} LOGIN PASSWORD '${PASSWORD}'`)
    await server.sql(`ALTER ROLE ${roleOf(zone)} SET TimeZone = '${zone}'`)
  }
  for (const ext of Object.keys(extensions)) {
    extensions[ext] = await server.sql(`CREATE EXTENSION IF NOT EXISTS ${ext}`).then(
      () => true,
      () => false,
    )
  }
  await server.sql(`CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy go', 'NULL', '')`)
  await server.sql(`CREATE DOMAIN posint AS int4 CHECK (VALUE > 0)`)
  await server.sql(`CREATE DOMAIN price AS numeric(10, 2)`)
  await server.sql(`CREATE TYPE comp AS (a int, b text, c timestamptz, d int[])`)
  await server.sql(`CREATE TYPE rich AS (i int, f4 float4, f8 float8, n numeric, b bool, t text, d date, ts timestamp, iv interval, by bytea,
    u uuid, j jsonb, ip inet, m money, pt point, bx box, bits varbit, r int4range, e mood, tm time, ttz timetz, ch "char", arr int[],
    tarr text[], nested comp, big int8, x xml)`)
  const { rows } = await server.sql(`SELECT t.oid::int AS oid, t.typelem::int AS elem, t.typbasetype::int AS base,
    EXISTS (SELECT 1 FROM pg_type a WHERE a.typarray = t.oid) AS is_array FROM pg_type t`)
  for (const r of rows) catalog.set(r.oid, { elem: r.elem, base: r.base, isArray: r.is_array })
})

test.after.always(async () => {
  for (const close of closers) await close().catch(() => {})
  if (server) await server.destroy()
})

// ---------- environments: a pg.Pool and a pgdbpool Pool on the same role ----------

const ZONES = ['UTC', 'America/New_York', 'Asia/Kolkata', 'Europe/Amsterdam', 'Pacific/Chatham', 'America/St_Johns']
const roleOf = (zone) => (zone === 'UTC' ? 'postgres' : `tz_${zone.replace(/\W/g, '_').toLowerCase()}`)

/** pg type-parser overrides matching pgdbpool's `types` options. */
function pgTypesFor(types) {
  const parsers = {}
  const arrayOf = (parse) => (text) => pg.types.arrayParser.create(text, (v) => (v === null ? null : parse(v))).parse()
  if (types.int8 === 'bigint') Object.assign(parsers, { 20: BigInt, 1016: arrayOf(BigInt) })
  if (types.int8 === 'number') Object.assign(parsers, { 20: (v) => parseInt(v, 10), 1016: arrayOf((v) => parseInt(v, 10)) })
  if (types.dates === 'string') {
    const same = (v) => v
    Object.assign(parsers, { 1082: same, 1114: same, 1184: same, 1182: arrayOf(same), 1115: arrayOf(same), 1185: arrayOf(same) })
  }
  return { getTypeParser: (oid, format) => parsers[oid] || pg.types.getTypeParser(oid, format) }
}

/**
 * Both libraries connected as a role whose session TimeZone is `zone` (so one-shot queries run
 * in that zone too), with the given pgdbpool `types` options (and the equivalent pg parsers).
 */
function env(zone = 'UTC', types = {}) {
  const key = `${zone} ${JSON.stringify(types)}`
  if (!envs.has(key)) {
    envs.set(
      key,
      (async () => {
        const user = roleOf(zone)
        const pgPool = new pg.Pool({ ...server.clientConfig(), user, max: 3, ...(Object.keys(types).length ? { types: pgTypesFor(types) } : {}) })
        pgPool.on('error', () => {})
        const pool = new Pool({
          type: 'non-threaded',
          db: { ...server.endpoint, user, application_name: 'types-test', query_timeout: 60000 },
          groups: { default: { connection_count: 3 } },
          types,
        })
        closers.push(
          () => pgPool.end(),
          () => pool.close(),
        )
        await pool.ready
        return { pgPool, pool }
      })(),
    )
  }
  return envs.get(key)
}

// ---------- comparing one statement ----------

async function settle(promise) {
  try {
    return { result: await promise }
  } catch (error) {
    return { error }
  }
}

/** The comparable parts of an outcome. */
function outcome({ result, error }) {
  if (error) return { error: error.sqlState || error.code || error.message }
  return {
    rows: result.rows,
    rowCount: result.rowCount,
    command: result.command,
    fields: result.fields.map((f) => ({ name: f.name, dataTypeID: f.dataTypeID })),
  }
}

/** An array literal as pg's parser (postgres-array) reads it, with `delim` between elements (`;` for box). */
function parseArrayText(text, parse, delim = ',') {
  let pos = text[0] === '[' ? text.indexOf('=') + 1 : 0
  const level = () => {
    const out = []
    pos++ // '{'
    if (text[pos] === '}') {
      pos++
      return out
    }
    for (;;) {
      if (text[pos] === '{') {
        out.push(level())
      } else if (text[pos] === '"') {
        let value = ''
        for (pos++; text[pos] !== '"'; pos++) value += text[pos] === '\\' ? text[++pos] : text[pos]
        pos++
        out.push(parse(value))
      } else {
        let end = pos
        while (text[end] !== delim && text[end] !== '}') end++
        const value = text.slice(pos, end)
        pos = end
        out.push(value === 'NULL' ? null : parse(value))
      }
      if (text[pos++] === '}') return out
    }
  }
  return level()
}

/** Base type of a domain, or the type itself. */
const baseOf = (oid) => (catalog.get(oid) && catalog.get(oid).base) || oid

/**
 * pg's outcome with pgdbpool's documented difference applied: arrays that pg hands out as the
 * server's text (element types without a pg array parser: enum[], name[], ranges, composites,
 * bit[], ...) are arrays here, each element decoded as pg decodes that element type.
 */
function documented(expected, rowMode) {
  if (expected.error) return expected
  const convert = expected.fields.map(({ dataTypeID }) => {
    const info = catalog.get(dataTypeID)
    if (!info || !info.isArray || pg.types.getTypeParser(dataTypeID).name !== 'noParse') return null
    const parse = pg.types.getTypeParser(baseOf(info.elem))
    const delim = info.elem === 603 ? ';' : ','
    return (v) => (typeof v === 'string' ? parseArrayText(v, parse, delim) : v)
  })
  if (convert.every((c) => c === null)) return expected
  const rows = expected.rows.map((row) => {
    if (rowMode === 'array') return row.map((v, i) => (convert[i] ? convert[i](v) : v))
    const out = { ...row }
    expected.fields.forEach((f, i) => {
      if (convert[i]) out[f.name] = convert[i](row[f.name])
    })
    return out
  })
  return { ...expected, rows }
}

/**
 * Runs `sql` through pg and through pgdbpool (one-shot and Handler) and asserts the same rows,
 * rowCount, command and fields (or the same SQLSTATE). Returns pg's raw result.
 */
async function same(t, e, sql, params = [], { rowMode, expectOk = false } = {}) {
  const { pgPool, pool } = await e
  const pgRaw = await settle(pgPool.query({ text: sql, values: params, rowMode }))
  if (expectOk && pgRaw.error) throw new Error(`pg failed on ${sql}: ${pgRaw.error.message}`)
  const expected = documented(outcome(pgRaw), rowMode)
  const oneShot = outcome(await settle(pool.query(sql, params, { rowMode })))
  const db = pool.handler()
  const viaHandler = outcome(await settle(db.query(sql, params, { rowMode })))
  await db.release()
  t.deepEqual(oneShot, expected, `query(): ${sql} ${params.length ? JSON.stringify(params, (k, v) => (typeof v === 'bigint' ? `${v}n` : v)) : ''}`)
  t.deepEqual(viaHandler, expected, `Handler: ${sql}`)
  return pgRaw.result
}

// ---------- the types ----------

const quote = (s) => `'${s.replace(/'/g, "''")}'`
/** A value is PostgreSQL input text, or `{ sql }` for an expression. */
const literal = (v, type) => (typeof v === 'string' ? `${quote(v)}::${type}` : `(${v.sql})::${type}`)

/**
 * Every type: values (input text unless `{ sql }`), and options — `zones` to run in several
 * session time zones, `types` for pgdbpool type options, `needs` for an extension.
 */
const TYPES = [
  { type: 'bool', values: ['true', 'false'] },
  { type: 'int2', values: ['0', '1', '-1', '32767', '-32768'] },
  { type: 'int4', values: ['0', '42', '2147483647', '-2147483648'] },
  { type: 'int8', values: ['0', '-1', '9007199254740993', '9223372036854775807', '-9223372036854775808'] },
  { type: 'int8', values: ['0', '-1', '9007199254740993', '9223372036854775807', '-9223372036854775808'], types: { int8: 'bigint' } },
  { type: 'int8', values: ['0', '-1', '9007199254740991', '9223372036854775807'], types: { int8: 'number' } },
  { type: 'oid', values: ['0', '1259', '4294967295'] },
  { type: 'float4', values: ['0', '-0', '0.1', '1.5', '123456.7', '1e+06', '3.4028235e+38', '1.1754944e-38', '1e-45', 'NaN', 'Infinity', '-Infinity'] },
  {
    type: 'float8',
    values: ['0', '-0', '0.1', '1e-300', '5e-324', '1.7976931348623157e+308', '9007199254740993', '123456789.123456789', 'NaN', 'Infinity', '-Infinity'],
  },
  {
    type: 'numeric',
    values: [
      '0',
      '1.500',
      '-0.000001',
      '1e-20',
      '100000000',
      '-99999999.99',
      '123456789012345678901234567890.123456789012345678901234567890',
      'NaN',
      'Infinity',
      '-Infinity',
    ],
  },
  { type: 'numeric(10,-2)', values: ['12345', '-155', '0'] },
  { type: 'money', values: ['0', '0.01', '1234567.89', '-1234567.89', '-92233720368547758.08', '92233720368547758.07'] },
  { type: 'text', values: ['', 'abc', 'NULL', 'ünïcödé ☃ 𝄞', 'quote " and \\ backslash', 'line\nbreak\ttab', ' padded ', '{a,b}', '(x)'] },
  { type: 'varchar', values: ['', 'abc', 'ünï ☃'] },
  { type: 'varchar(3)', values: ['a', 'abc'] },
  { type: 'char(5)', values: ['', 'a', 'abcde', 'ü ☃'] },
  { type: 'name', values: ['pg_class', 'a b', '', 'NULL'] },
  { type: 'bytea', values: ['\\x', '\\x00ff80', '\\xdeadbeef', 'abc', { sql: `decode(repeat('ff00', 5000), 'hex')` }] },
  { type: 'uuid', values: ['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '00000000-0000-0000-0000-000000000000', 'FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF'] },
  { type: 'json', values: ['null', '{"a": [1, {"b": null}], "ü": "☃"}', '"str"', '1.50', '[]', '{"a": 1, "a": 2}', '12345678901234567890', '"\\u00e9\\n"'] },
  {
    type: 'jsonb',
    values: [
      'null',
      '{"a": [1, {"b": null}], "ü": "☃", "deep": {"x": [[[{"y": true}]]]}}',
      '"str"',
      '1.50',
      '[]',
      '{"a": 1, "a": 2}',
      '12345678901234567890',
      '"\\u00e9\\n"',
    ],
  },
  {
    type: 'date',
    values: [
      '2020-02-29',
      '1970-01-01',
      '1969-12-31',
      '0001-01-01',
      '0001-12-31 BC',
      '0044-03-15 BC',
      '0099-12-31',
      '0100-01-01',
      '1582-10-04',
      '9999-12-31',
      '10000-01-01',
      '5874897-12-31',
      'infinity',
      '-infinity',
    ],
  },
  {
    type: 'timestamp',
    values: [
      '2020-01-01 12:34:56.789123',
      '0050-06-01 01:02:03',
      '0001-01-01 00:00:00',
      '0001-01-01 00:00:00 BC',
      '1900-01-01 00:00:00',
      '1969-12-31 23:59:59.9995',
      '1999-12-31 23:59:59.999999',
      '2000-01-01 00:00:00.0005',
      '2021-03-28 02:30:00',
      '2021-10-31 02:30:00',
      '10000-01-01 00:00:00',
      '294276-12-31 23:59:59.999999',
      'infinity',
      '-infinity',
    ],
  },
  {
    type: 'timestamptz',
    zones: ZONES,
    values: [
      '2020-01-01 12:34:56.789123+00',
      '1800-01-01 00:00:00+00',
      '1900-01-01 00:00:00+00',
      '0044-03-15 12:00:00+00 BC',
      '0010-06-01 00:00:00+00',
      '1969-12-31 23:59:59.9995+00',
      '1970-01-01 00:00:00.000001+00',
      '2021-03-28 01:30:00+00',
      '10000-01-01 00:00:00.001+00',
      'infinity',
      '-infinity',
    ],
  },
  { type: 'time', values: ['00:00:00', '12:34:56.5', '23:59:59.999999', '24:00:00', '00:00:00.000001'] },
  { type: 'timetz', values: ['12:00:00+05:30', '12:00:00-08', '00:00:00+00', '12:00:00+01:02:03', '23:59:59.999999-15:59', '12:00+14'] },
  {
    type: 'interval',
    values: [
      '0',
      '1 year 2 mons 3 days 04:05:06.789',
      '-1 year -2 mons +3 days -04:05:06.000001',
      '100 hours',
      '1 day -1 second',
      '-0.0015 seconds',
      '1 mon 00:00:00.5',
      'P1Y2M3DT4H5M6S',
      '178000000 years',
      '-178000000 years',
      '2562047788:00:54.775806',
      'infinity',
      '-infinity',
    ],
  },
  {
    type: 'inet',
    values: [
      '192.168.1.5',
      '192.168.1.5/24',
      '0.0.0.0/0',
      '::1',
      '::',
      '1::',
      '::ffff:1.2.3.4',
      '::1.2.3.4',
      '2001:db8::1',
      '1:0:0:2:0:0:0:3',
      '1:0:2:3:4:5:6:7',
      'fe80::1:2:3:4/64',
    ],
  },
  { type: 'cidr', values: ['10.0.0.0/8', '192.168.1.0/24', '1.2.3.4/32', '2001:db8::/32', '::/0', '::ffff:1.2.3.0/120'] },
  { type: 'macaddr', values: ['08:00:2b:01:02:03', 'ff:ff:ff:ff:ff:ff', '00:00:00:00:00:00'] },
  { type: 'macaddr8', values: ['08:00:2b:01:02:03:04:05', '08:00:2b:01:02:03'] },
  { type: 'point', values: ['(1.5,-2)', '(0,0)', '(1e-300,1e+300)', '(0.1,-0)', '(NaN,Infinity)'] },
  { type: 'circle', values: ['<(1,2),3.5>', '<(0,0),0>', '<(0.1,-1e+20),1e-05>'] },
  { type: 'box', values: ['(1,2),(3,4)', '(0.1,1e+20),(-1,-1e-05)'] },
  { type: 'lseg', values: ['[(1,2),(3,4)]', '[(0.1,0.2),(1e+15,1e-04)]'] },
  { type: 'path', values: ['[(1,2),(3,4),(0.1,1e+20)]', '((1,2),(3,4))', '[(0,0)]'] },
  { type: 'polygon', values: ['((1,2),(3,4),(5,5))', '((0,0))', '((0.5,123456789012345),(1234567890123456,-0.0001))'] },
  { type: 'line', values: ['{1,2,3}', '{1,-1,0}', '{0.1,0,1e+300}'] },
  {
    type: 'tsvector',
    values: ['', 'a fat cat sat on a mat', "'it''s' 'back\\\\slash':1A,2B,3C,4D", "'ünï':1", { sql: `to_tsvector('english', 'The quick brown foxes jumped')` }],
  },
  { type: 'xml', values: ['<a>x</a>', 'text only', '<r a="1"><b/></r>'] },
  { type: 'bit(4)', values: ['1010', '0000', '1111'] },
  { type: 'varbit', values: ['', '1', '10101', '1'.repeat(67)] },
  { type: 'mood', values: ['sad', 'happy go', 'NULL', ''] },
  { type: 'posint', values: ['1', '2147483647'] },
  { type: 'price', values: ['1.50', '-99999999.99'] },
  { type: 'comp', values: ['(1,"x y","2020-01-01 00:00:00+00","{1,2}")', '(,"",,)', '(1,"a""b\\\\c(),",,{})', '(-5,NULL,"-infinity","{{1,NULL},{3,4}}")'] },
  {
    type: 'rich',
    values: [
      {
        sql: `ROW(1, 1.5, 0.1, 12.340, true, 'a "b" \\ c', '0044-03-15 BC', '2020-01-01 10:00:00.5', '1 year -1 day 00:00:01.5', '\\xdead',
          'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, "x y"]}', '::ffff:1.2.3.4/120', -12.5, '(1.5,2)', '(1,2),(3,4)', B'101', '[1,10)',
          'happy go', '12:00:00.25', '12:00+05:30', 'x', ARRAY[1,NULL,3], ARRAY['a b', NULL, '', 'NULL', 'q"\\'], ROW(7, 'n', NULL, '{}')::comp,
          -9223372036854775808, '<a>x</a>')`,
      },
      {
        sql: `ROW(NULL, 'NaN', '-Infinity', 'NaN', false, '', 'infinity', '-infinity', '0', '\\x', NULL, 'null', '0.0.0.0/0', 0, NULL, NULL, B'', 'empty', '', '24:00', '00:00-00:00:01', '', '{}', '{}', NULL, 0, '')`,
      },
    ],
  },
  { type: 'int4range', values: ['[1,10)', 'empty', '(,5]', '[3,)', '(,)'] },
  { type: 'int8range', values: ['[-9223372036854775808,9223372036854775807)'] },
  { type: 'numrange', values: ['[1.5,2.5]', '(,0.000001)', 'empty'] },
  { type: 'daterange', values: ['[2020-01-01,2020-12-31]', '[2020-01-01,infinity)', '[0044-03-15 BC,0001-01-01)'] },
  { type: 'tsrange', values: ['["2020-01-01 00:00:00","2020-01-02 00:00:00.5")'] },
  { type: 'tstzrange', values: ['["2020-01-01 00:00:00+00","2020-01-02 00:00:00+00")', 'empty', '[-infinity,infinity]', '(,"2020-01-01 12:00:00.5+00")'] },
  { type: 'int4multirange', values: ['{}', '{[1,3), [5,7)}', '{(,0]}'] },
  { type: 'hstore', needs: 'hstore', values: ['', 'a=>1, b=>NULL', '"a b"=>"c\\"d", "e\\\\f"=>"", "NULL"=>"NULL"'] },
  { type: 'citext', needs: 'citext', values: ['AbC', '', 'ünï'] },
  { type: 'ltree', needs: 'ltree', values: ['a.b.c', '', 'Top.Science'] },
  { type: 'lquery', needs: 'ltree', values: ['*.b|c.*{1,2}', 'a.b'] },
  { type: 'ltxtquery', needs: 'ltree', values: ['a & !b', 'x*@ | y'] },
  { type: 'int2vector', values: ['1 2 3', '', '-1'] },
  { type: 'oidvector', values: ['1 2', '', '4294967295'] },
  { type: '"char"', values: ['a', 'Z', '', '\\351'] },
  { type: 'xid', values: ['0', '12345', '4294967295'] },
  { type: 'xid8', values: ['0', '18446744073709551615'] },
  { type: 'cid', values: ['0', '7'] },
  { type: 'tid', values: ['(0,1)', '(4294967295,65535)'] },
  { type: 'pg_lsn', values: ['0/0', '16/B374D848', 'FFFFFFFF/FFFFFFFF'] },
  { type: 'pg_snapshot', values: ['10:20:', '10:20:12,15'] },
  { type: 'jsonpath', values: ['$.a', '$."b c"[*] ? (@ > 1)'] },
  { type: 'refcursor', values: ['c1'] },
]

/** Everything the checks run for one type in one environment. */
async function checkType(t, e, { type, values }) {
  const lits = values.map((v) => literal(v, type))
  // A column of values plus NULL, in object and array row mode.
  const rowsSql = lits.map((l, i) => `(${i}, ${l})`).join(', ')
  const column = `SELECT v FROM (VALUES ${rowsSql}, (${lits.length}, NULL::${type})) AS x(i, v) ORDER BY i`
  const result = await same(t, e, column, [], { expectOk: true })
  await same(t, e, column, [], { rowMode: 'array' })
  // 1-D with a NULL element, 2-D, empty.
  const [a, b = a] = lits
  await same(t, e, `SELECT ARRAY[${lits.join(', ')}, NULL]::${type}[] AS a1, ARRAY[[${a}, NULL], [${b}, ${a}]]::${type}[] AS a2, '{}'::${type}[] AS a0`, [], {
    expectOk: true,
  })
  // The same values as (text) parameters, and as one array parameter.
  const texts = values.filter((v) => typeof v === 'string')
  if (texts.length > 0) {
    await same(t, e, `SELECT ${texts.map((_, i) => `$${i + 1}::${type} AS p${i}`).join(', ')}, $${texts.length + 1}::${type} AS p_null`, [...texts, null], {
      expectOk: true,
    })
    await same(t, e, `SELECT $1::${type}[] AS a`, [[...texts, null]])
  }
  // What pg decoded, sent back as parameters (Dates, Buffers, intervals, objects, arrays).
  for (const v of result.rows.map((r) => r.v)) {
    if (v instanceof Date && Number.isNaN(v.getTime())) continue // pg warns about invalid Dates
    await same(t, e, `SELECT $1::${type} AS v`, [v])
  }
}

for (const spec of TYPES) {
  const label = spec.types ? `${spec.type} ${JSON.stringify(spec.types)}` : spec.type
  test(`type ${label}`, async (t) => {
    if (spec.needs && !extensions[spec.needs]) {
      t.log(`${spec.needs} extension not available: skipped`)
      t.pass()
      return
    }
    for (const zone of spec.zones || ['UTC']) await checkType(t, env(zone, spec.types), spec)
  })
}

// ---------- deliberate differences ----------

test('reg* types are OIDs (pg returns their names); cast to text for names', async (t) => {
  const { pgPool, pool } = await env()
  const sql = `SELECT 'pg_class'::regclass AS c, 'int4'::regtype AS ty, 'now'::regproc AS p, ARRAY['pg_type'::regclass, NULL] AS a,
    'pg_class'::regclass::text AS name, 'now'::regproc::oid AS p_oid, 'pg_type'::regclass::oid AS a_oid`
  const ours = (await pool.query(sql)).rows[0]
  const theirs = (await pgPool.query(sql)).rows[0]
  t.deepEqual(ours, { c: 1259, ty: 23, p: theirs.p_oid, a: [theirs.a_oid, null], name: 'pg_class', p_oid: theirs.p_oid, a_oid: theirs.a_oid })
  t.deepEqual([theirs.c, theirs.ty, theirs.p, theirs.a], ['pg_class', 'integer', 'now', '{pg_type,NULL}'])
})

test('tsquery (no text form here) arrives as the binary value in a Buffer', async (t) => {
  const { pgPool, pool } = await env()
  const sql = `SELECT 'fat & (rat | !cat)'::tsquery AS q, 'fat & (rat | !cat)'::tsquery::text AS text`
  const ours = (await pool.query(sql)).rows[0]
  const theirs = (await pgPool.query(sql)).rows[0]
  t.true(Buffer.isBuffer(ours.q))
  t.is(ours.text, theirs.q)
})

test('time stamps inside ranges and composites print in UTC whatever the session TimeZone', async (t) => {
  const sql = `SELECT '["2020-06-01 12:00:00+00","2020-06-02 00:00:00.25+00")'::tstzrange AS r,
    ROW(1, 'x', '2020-06-01 12:00:00+00', '{1}')::comp AS c, ARRAY['[2020-01-01 00:00+00,)'::tstzrange] AS ra`
  const utc = (await (await env('UTC')).pgPool.query(sql)).rows[0]
  for (const zone of ['Asia/Kolkata', 'America/St_Johns']) {
    const { pgPool, pool } = await env(zone)
    const ours = (await pool.query(sql)).rows[0]
    const theirs = (await pgPool.query(sql)).rows[0]
    t.deepEqual(ours, { r: utc.r, c: utc.c, ra: parseArrayText(utc.ra, (v) => v) }, zone)
    t.not(theirs.r, utc.r, `pg prints ${zone} offsets`)
  }
})

test("dates: 'string' gives PostgreSQL's text in UTC (as pg's text in a UTC session)", async (t) => {
  const e = env('UTC', { dates: 'string' })
  const dates = ['2020-02-29', '0044-03-15 BC', '0001-01-01', '10000-01-01', 'infinity', '-infinity']
  const stamps = ['2020-01-01 12:34:56.789123', '0044-03-15 12:00:00 BC', '1969-12-31 23:59:59.9995', '10000-01-01 00:00:00.001', 'infinity']
  for (const [type, values] of [
    ['date', dates],
    ['timestamp', stamps],
    ['timestamptz', stamps.map((s) => (s.endsWith('BC') ? s.replace(' BC', '+00 BC') : s === 'infinity' ? s : `${s}+00`))],
  ]) {
    const lits = values.map((v) => literal(v, type))
    await same(t, e, `SELECT v FROM (VALUES ${lits.map((l, i) => `(${i}, ${l})`).join(', ')}) AS x(i, v) ORDER BY i`, [], { expectOk: true })
    await same(t, e, `SELECT ARRAY[${lits.join(', ')}, NULL] AS a`, [], { expectOk: true })
  }
  // In another session zone pg's text carries that zone's offsets; ours stays UTC.
  const { pool } = await env('Asia/Kolkata', { dates: 'string' })
  t.deepEqual((await pool.query(`SELECT '2020-01-01 00:00:00+00'::timestamptz AS v`)).rows, [{ v: '2020-01-01 00:00:00+00' }])
})

test('intervals are PostgresInterval objects like pg: same fields, toPostgres() and toISO()', async (t) => {
  const { pgPool, pool } = await env()
  const sql = `SELECT '1 year 2 mons 3 days 04:05:06.789'::interval AS v`
  const ours = (await pool.query(sql)).rows[0].v
  const theirs = (await pgPool.query(sql)).rows[0].v
  t.true(ours instanceof PostgresInterval)
  t.deepEqual(ours, theirs)
  t.is(ours.toPostgres(), theirs.toPostgres())
  t.is(ours.toISO(), theirs.toISO())
  t.is(ours.toISOString(), theirs.toISOString())
  // Infinite intervals (PostgreSQL 17+) come out empty, as from pg.
  t.deepEqual(Object.keys((await pool.query(`SELECT 'infinity'::interval AS v`)).rows[0].v), [])
})

test('anonymous records, void, unknown and domains over arrays', async (t) => {
  const e = env()
  await same(t, e, `SELECT ROW(1, 'a b', NULL, 2.5, ARRAY[1, 2], ROW('x', '')) AS r, ROW() AS empty, pg_sleep(0) AS v, 'lit' AS u`, [], { expectOk: true })
  await server.sql(`DO $$ BEGIN CREATE DOMAIN intlist AS int[] CHECK (cardinality(VALUE) < 10); EXCEPTION WHEN duplicate_object THEN NULL; END $$`)
  await same(t, e, `SELECT '{1,2,NULL}'::intlist AS l, NULL::intlist AS n`, [], { expectOk: true })
})

// ---------- result shape ----------

test('fields, rowCount and command for CREATE / INSERT / UPDATE / DELETE / SELECT / DROP', async (t) => {
  const { pgPool, pool } = await env()
  const run = async (table, q) => {
    const steps = [
      `CREATE TABLE ${table} (id int PRIMARY KEY, v text, at timestamptz DEFAULT '2020-01-01 00:00:00+00')`,
      `INSERT INTO ${table} (id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c')`,
      `INSERT INTO ${table} (id, v) VALUES (4, 'd') RETURNING id, v, at`,
      `UPDATE ${table} SET v = v || '!' WHERE id <= 2`,
      `UPDATE ${table} SET v = 'z' WHERE id = 3 RETURNING *`,
      `DELETE FROM ${table} WHERE id = 1`,
      `DELETE FROM ${table} WHERE id > 100`,
      `SELECT * FROM ${table} ORDER BY id`,
      `SELECT * FROM ${table} WHERE false`,
      `SELECT id, v AS id FROM ${table} ORDER BY 1`,
      `WITH d AS (DELETE FROM ${table} WHERE id = 4 RETURNING id) SELECT count(*) AS n FROM d`,
      `CREATE TEMP TABLE ${table}_copy AS SELECT * FROM ${table}`,
      `SHOW TimeZone`,
      `EXPLAIN SELECT 1`,
      `VALUES (1, 'a'), (2, 'b')`,
      `DROP TABLE ${table}`,
    ]
    const out = []
    for (const sql of steps) {
      const r = await q(sql)
      out.push({ rows: r.rows, rowCount: r.rowCount, command: r.command, fields: r.fields.map((f) => ({ name: f.name, dataTypeID: f.dataTypeID })) })
    }
    return out
  }
  const theirs = await run('shape_pg', (sql) => pgPool.query(sql))
  const ours = await run('shape_ours', (sql) => pool.query(sql))
  t.deepEqual(ours, theirs)
  const db = pool.handler()
  try {
    t.deepEqual(await run('shape_handler', (sql) => db.query(sql)), theirs)
  } finally {
    await db.release()
  }
  // Array row mode keeps duplicate column names apart, like pg.
  await same(t, env(), `SELECT 1 AS a, 'x' AS a, NULL::int AS b, ARRAY[1.5]::float8[] AS c`, [], { rowMode: 'array', expectOk: true })
  await same(t, env(), `SELECT 1 AS a, 'x' AS a`, [], { expectOk: true })
})

test('errors from bad input match pg (same SQLSTATE)', async (t) => {
  const e = env()
  await same(t, e, `SELECT $1::int AS v`, ['x'])
  await same(t, e, `SELECT $1::uuid AS v`, ['nope'])
  await same(t, e, `SELECT $1::jsonb AS v`, [{ a: [1, 'two'] }])
  const { pool } = await e
  await t.throwsAsync(pool.query(`SELECT $1::point AS v`, [{ x: 1, y: 2 }]), { instanceOf: DBQueryError })
})
