'use strict'
// Hostile or huge results fail cleanly (README "No crash path"): a value the core cannot read,
// array dimensions that do not match the data, runaway nesting, a result too large for the
// result buffer or for a JS string — each is that query's DBQueryError, never a wrong row, a
// misread of the next value, a hang or a crash, and the connection goes on serving. The bad
// values come from a fake server that sends them byte for byte (helpers/fakepg.js); the queries
// run in child processes so that a hang or a stack overflow fails the test instead of the runner.
const test = require('ava')
const path = require('node:path')

const { Pool, DBQueryError } = require('..')
const codec = require('../dist/lib/codec')
const { startServer, guardProcess } = require('./helpers/pg')
const { FakePg, msg, i16, i32 } = require('./helpers/fakepg')
const { runNode, jsonLines, assertCleanExit } = require('./helpers/child')

guardProcess(test)

const CHILD = path.join(__dirname, 'helpers', 'hostile-child.js')

// Type OIDs.
const OID = {
  bool: 16,
  bytea: 17,
  int8: 20,
  int2: 21,
  int4: 23,
  text: 25,
  json: 114,
  point: 600,
  box: 603,
  float4: 700,
  float8: 701,
  circle: 718,
  money: 790,
  macaddr: 829,
  inet: 869,
  int4arr: 1007,
  textarr: 1009,
  date: 1082,
  time: 1083,
  timestamp: 1114,
  timestamptz: 1184,
  interval: 1186,
  timetz: 1266,
  bit: 1560,
  numeric: 1700,
  numericarr: 1231,
  record: 2249,
  uuid: 2950,
  tsvector: 3614,
  jsonb: 3802,
  int4range: 3904,
}

const be32 = (v) => i32(v)
const int4 = (v) => be32(v)

/** Binary array: ndim, flags, element oid, (dim, lower bound) per dimension, then elements. */
function array(elemOid, dims, elements) {
  return Buffer.concat([
    be32(dims.length),
    be32(0),
    be32(elemOid),
    ...dims.flatMap((d) => [be32(d), be32(1)]),
    ...elements.map((e) => (e === null ? be32(-1) : Buffer.concat([be32(e.length), e]))),
  ])
}

/** A record nested `depth` deep: (((...(1)...))). */
function deepRecord(depth) {
  let inner = Buffer.concat([be32(1), be32(OID.int4), be32(4), int4(1)])
  for (let i = 1; i < depth; i++) inner = Buffer.concat([be32(1), be32(OID.record), be32(inner.length), inner])
  return inner
}

const good = { columns: [{ name: 'v', oid: OID.int4 }], rows: [[int4(7)]] }
const one = (oid, cell, extra = true) => ({
  columns: [{ name: 'bad', oid }, ...(extra ? [{ name: 'after', oid: OID.int4 }] : [])],
  rows: [[cell, ...(extra ? [int4(42)] : [])]],
})

const HOSTILE = {
  'short-int4': one(OID.int4, Buffer.from([0, 1])),
  'long-int4': one(OID.int4, Buffer.from([0, 0, 0, 1, 0, 0])),
  'short-bool': one(OID.bool, Buffer.alloc(0)),
  'short-int2': one(OID.int2, Buffer.from([1])),
  'short-float8': one(OID.float8, Buffer.from([1, 2, 3, 4])),
  'short-timestamptz': one(OID.timestamptz, Buffer.alloc(7)),
  'short-date': one(OID.date, Buffer.alloc(3)),
  'long-interval': one(OID.interval, Buffer.alloc(20)),
  'short-point': one(OID.point, Buffer.alloc(8)),
  'short-circle': one(OID.circle, Buffer.alloc(16)),
  'short-int8': one(OID.int8, Buffer.alloc(5)),
  'short-numeric': one(OID.numeric, Buffer.alloc(6)),
  'jsonb-invalid': one(OID.jsonb, Buffer.concat([Buffer.from([1]), Buffer.from('{"not json')])),
  'jsonb-version': one(OID.jsonb, Buffer.concat([Buffer.from([9]), Buffer.from('{}')])),
  'json-invalid': one(OID.json, Buffer.from('[1,')),
  'array-dims-lie': one(OID.int4arr, array(OID.int4, [5], [int4(1), int4(2)])),
  'array-dims-short': one(OID.int4arr, array(OID.int4, [1], [int4(1), int4(2), int4(3)])),
  'array-dims-negative': one(OID.int4arr, array(OID.int4, [-3], [])),
  'array-dims-huge': one(OID.int4arr, array(OID.int4, [0x7fffffff, 0x7fffffff], [])),
  'array-dims-zero-product': one(OID.int4arr, array(OID.int4, [100000, 100000, 0], [])),
  'array-ndim-7': one(OID.int4arr, array(OID.int4, [1, 1, 1, 1, 1, 1, 1], [int4(1)])),
  'array-elem-short': one(OID.int4arr, array(OID.int4, [2], [Buffer.from([0, 0]), int4(1)])),
  'array-elem-overrun': one(OID.int4arr, Buffer.concat([array(OID.int4, [1], []), be32(100), int4(1)])),
  'text-array-dims-lie': one(OID.textarr, array(OID.text, [3, 2], [Buffer.from('a'), Buffer.from('b')])),
  'record-deep': one(OID.record, deepRecord(100000)),
  'record-overrun': one(OID.record, Buffer.concat([be32(2), be32(OID.int4), be32(4), int4(1), be32(OID.int4), be32(400)])),
  'datarow-overrun': { columns: [{ name: 'bad', oid: OID.text }], rows: [msg('D', Buffer.concat([i16(1), i32(1000), Buffer.from('abcd')]))] },
  'bit-overrun': one(OID.bit, Buffer.concat([be32(1000), Buffer.from([0xff])])),
  'inet-short': one(OID.inet, Buffer.from([2, 32, 0, 4, 1, 2])),
}

// Random values for every type, seeded by the scenario name: every query must either give a row
// of the right shape or fail with DBQueryError, and never desynchronise the connection.
const RANDOM_TYPES = Object.values(OID)
function mulberry32(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) >>> 0
    let t = seed
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
function randomScenario(name) {
  const random = mulberry32(Number(name.replace(/\D/g, '')) + 1)
  const oid = RANDOM_TYPES[Math.floor(random() * RANDOM_TYPES.length)]
  const len = [0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 17, 24, 40][Math.floor(random() * 14)]
  const cell = Buffer.from(Array.from({ length: len }, () => Math.floor(random() * 256)))
  if (random() < 0.3 && len >= 12) cell.writeInt32BE(Math.floor(random() * 8) - 1, 0) // a plausible ndim / count
  return one(oid, cell)
}

let real
let fake

test.before(async () => {
  real = await startServer()
  fake = new FakePg({ good, ...HOSTILE, '*': randomScenario })
  await fake.listen()
})

test.after.always(async () => {
  if (fake) await fake.close()
  if (real) await real.destroy()
})

async function runQueries(t, endpoint, queries, { env, timeout = 60000 } = {}) {
  const result = await runNode(CHILD, [JSON.stringify(endpoint), ...queries], { env, timeout })
  assertCleanExit(t, result)
  return jsonLines(result.stdout)
}

for (const name of Object.keys(HOSTILE)) {
  test(`hostile value '${name}': that query's DBQueryError, then the connection goes on`, async (t) => {
    const lines = await runQueries(t, fake.endpoint, [`SELECT 'scenario:${name}'`, "SELECT 'scenario:good'"], { timeout: 40000 })
    t.is(lines.length, 4, JSON.stringify(lines))
    for (const pool of ['named', 'unnamed']) {
      const [bad, after] = lines.filter((l) => l.pool === pool)
      t.truthy(bad && after, JSON.stringify(lines))
      if (!bad || !after) continue
      t.false(bad.ok, `${pool}: ${JSON.stringify(bad.rows)}`)
      if (!bad.ok) {
        t.true(['DBQueryError', 'DBConnectionError'].includes(bad.error.name), `${pool}: ${JSON.stringify(bad.error)}`)
        t.false(/undefined|Cannot read|is not a function|RangeError|out of range/i.test(bad.error.message), bad.error.message)
      }
      t.true(after.ok, JSON.stringify(after))
      t.deepEqual(after.rows, [{ v: 7 }])
    }
  })
}

test('random values of every type: a row of the right shape or a DBQueryError, and the connection never loses its place', async (t) => {
  const queries = []
  for (let i = 0; i < 400; i++) queries.push(`SELECT 'scenario:random${i}'`, "SELECT 'scenario:good'")
  const lines = await runQueries(t, fake.endpoint, queries, { timeout: 90000 })
  t.is(lines.length, queries.length * 2)
  for (const line of lines) {
    if (line.sql.includes('good')) {
      t.deepEqual(line.rows, [{ v: 7 }], JSON.stringify(line))
    } else if (line.ok) {
      t.is(line.rows.length, 1)
      t.deepEqual(line.ownKeys, ['bad', 'after'])
      t.is(line.rows[0].after, 42, JSON.stringify(line))
    } else {
      t.is(line.error.name, 'DBQueryError', JSON.stringify(line))
    }
  }
})

test('a column named __proto__ is an own property and never changes the row prototype', async (t) => {
  const pool = new Pool({ type: 'non-threaded', db: real.endpoint, groups: { default: { connection_count: 1 } } })
  const r = await pool.query(`SELECT '{"polluted": true}'::jsonb AS "__proto__", 1 AS a, 'x' AS "constructor"`)
  const row = r.rows[0]
  t.is(Object.getPrototypeOf(row), Object.prototype)
  t.deepEqual(Object.keys(row), ['__proto__', 'a', 'constructor'])
  t.deepEqual(Object.getOwnPropertyDescriptor(row, '__proto__').value, { polluted: true })
  t.is(row.polluted, undefined)
  t.is(row.a, 1)
  t.is({}.polluted, undefined)
  const nulled = (await pool.query('SELECT NULL::jsonb AS "__proto__"')).rows[0]
  t.is(Object.getPrototypeOf(nulled), Object.prototype)
  t.true(Object.hasOwn(nulled, '__proto__'))
  t.deepEqual((await pool.query(`SELECT 1 AS "__proto__"`, [], { rowMode: 'array' })).rows, [[1]])
  await pool.close()
})

test.serial('property: result buffers from the core, truncated anywhere or replaced by random bytes, always fail to decode with DBQueryError', async (t) => {
  const pool = new Pool({ type: 'non-threaded', db: real.endpoint, groups: { default: { connection_count: 1 } } })
  // (serial: no other test's results may pass through the patched decoder meanwhile)
  const captured = []
  const decode = codec.decodeResult
  codec.decodeResult = (buf, rowMode, types) => {
    captured.push(Buffer.from(buf))
    return decode(buf, rowMode, types)
  }
  let results
  try {
    results = [
      await pool.query(`SELECT 1::int4 AS i, 'text é' AS t, NULL::int AS n, 12.5::numeric AS num, true AS b, '\\x0102'::bytea AS by,
        '{"a":[1,2]}'::jsonb AS j, ARRAY[[1,2],[3,NULL]]::int4[] AS arr, ARRAY['a','b c']::text[] AS tarr, '2020-01-02 03:04:05+00'::timestamptz AS ts,
        '1 day 2 hours'::interval AS iv, point(1,2) AS p, circle(point(1,2), 3) AS c, 9007199254740993::int8 AS big, 1.5::float8 AS f, 'x'::"char" AS ch,
        '[1,5)'::int4range AS r, ROW(1, 'a') AS rec FROM generate_series(1, 3)`),
      await pool.query('SELECT FROM generate_series(1, 2)'),
      await pool.query("SELECT repeat('z', 300) AS long, ARRAY[]::int[] AS empty"),
    ]
  } finally {
    codec.decodeResult = decode
  }
  await pool.close()
  t.is(captured.length, 3)
  const types = { int8: 'string', dates: 'date' }
  captured.forEach((buf, k) => {
    // Whole, it decodes to what the pool returned.
    t.deepEqual(decode(buf, 'object', types).rows, results[k].rows)
    for (let len = 0; len < buf.length; len++) {
      let decoded
      try {
        decoded = decode(buf.subarray(0, len), 'object', types)
      } catch (e) {
        if (!(e instanceof DBQueryError)) t.fail(`truncated to ${len} of ${buf.length}: ${e && e.constructor.name}: ${e && e.message}`)
        continue
      }
      t.fail(`truncated to ${len} of ${buf.length} bytes decoded to ${decoded.rows.length} rows`)
      break
    }
  })
  const random = mulberry32(12345)
  let threw = 0
  for (let i = 0; i < 3000; i++) {
    const buf = Buffer.from(Array.from({ length: Math.floor(random() * 200) }, () => Math.floor(random() * 256)))
    if (buf.length && random() < 0.5) buf[0] = 1
    try {
      decode(buf, random() < 0.5 ? 'object' : 'array', types)
      t.fail(`random buffer ${i} decoded: ${buf.toString('hex')}`)
      break
    } catch (e) {
      if (!(e instanceof DBQueryError)) {
        t.fail(`random buffer ${i}: ${e && e.constructor.name}: ${e && e.message}`)
        break
      }
      threw++
    }
  }
  t.is(threw, 3000)
})

test('a result too large for the result buffer is that query’s DBQueryError; the connection goes on', async (t) => {
  // The limit is the JS Buffer limit (4 GiB on Node 20); lowered here to 1 MiB to test it.
  const lines = await runQueries(
    t,
    real.endpoint,
    [
      "SELECT repeat('x', 2000000) AS big",
      'SELECT 1 AS v',
      "SELECT g, repeat('y', 100) AS pad FROM generate_series(1, 20000) g",
      "SELECT length(repeat('x', 500000)) AS n, repeat('x', 500000) AS ok",
    ],
    { env: { PGDBPOOL_MAX_RESULT_BYTES: String(1 << 20) } },
  )
  for (const pool of ['named', 'unnamed']) {
    const [big, after, rows, fits] = lines.filter((l) => l.pool === pool)
    t.false(big.ok, JSON.stringify(big).slice(0, 300))
    t.is(big.error && big.error.name, 'DBQueryError')
    t.regex(big.error.message, /too large/)
    t.deepEqual(after.rows, [{ v: 1 }])
    t.false(rows.ok)
    t.regex(rows.error.message, /too large/)
    t.true(fits.ok, JSON.stringify(fits.error))
    t.is(fits.rows[0].n, 500000)
  }
})

test.serial('a value too large for a JS string is that query’s DBQueryError, not a RangeError; the connection goes on', async (t) => {
  const lines = await runQueries(t, real.endpoint, ["SELECT repeat('x', 536870889) AS big", 'SELECT 1 AS v'], { timeout: 110000 })
  for (const pool of ['named', 'unnamed']) {
    const [big, after] = lines.filter((l) => l.pool === pool)
    t.false(big.ok)
    t.is(big.error.name, 'DBQueryError', JSON.stringify(big.error))
    t.regex(big.error.message, /too large for a JavaScript string/)
    t.deepEqual(after.rows, [{ v: 1 }])
  }
})
