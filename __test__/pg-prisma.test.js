'use strict'
// Prisma's @prisma/adapter-pg (`PrismaPg`) used directly on a pgdbpool/pg Pool, unpatched. It
// takes a pool only if `pool instanceof pg.Pool` (node-postgres's class): pgdbpool/pg's Pool has
// pg.Pool's prototype under its own when pg is installed (see README, "Using it with your ORM").
const test = require('ava')

const pg = require('pgdbpool/pg')
const realPg = require('pg')
const { PrismaPg } = require('@prisma/adapter-pg')
const { startServer, guardProcess } = require('./helpers/pg')

guardProcess(test)

let server
let pool
let adapter

const str = { scalarType: 'string', arity: 'scalar' }
const int = { scalarType: 'int', arity: 'scalar' }
const dt = { scalarType: 'datetime', dbType: 'TIMESTAMPTZ', arity: 'scalar' }
const json = { scalarType: 'json', arity: 'scalar' }
const q = (sql, args = [], argTypes = []) => ({ sql, args, argTypes })

test.before(async () => {
  server = await startServer()
  pool = new pg.Pool({ ...server.clientConfig(), max: 4 })
  const factory = new PrismaPg(pool)
  t0(factory)
  adapter = await factory.connect()
  await adapter.executeScript(
    'CREATE TABLE pr_user (id serial PRIMARY KEY, email text UNIQUE NOT NULL, score numeric(8,2), seen timestamptz, data jsonb, blob bytea, tags text[]); CREATE TABLE pr_log (n int)',
  )
})

function t0(factory) {
  // The pool was taken as a pool (not as a config to build a pg.Pool from).
  if (factory.externalPool !== pool) throw new Error('PrismaPg did not take the pgdbpool/pg Pool as a pool')
}

test.after.always(async () => {
  if (adapter) await adapter.dispose()
  if (pool) await pool.end()
  if (server) await server.destroy()
})

test.serial('the pool is a pg.Pool to Prisma', (t) => {
  t.true(pool instanceof realPg.Pool)
})

test.serial("queryRaw / executeRaw: CRUD with Prisma's type conversions", async (t) => {
  const seen = new Date('2023-04-05T06:07:08.009Z')
  const inserted = await adapter.queryRaw(
    q(
      'INSERT INTO pr_user (email, score, seen, data) VALUES ($1, $2, $3, $4) RETURNING id, email, score, seen, data',
      ['ann@example.com', '12.5', seen.toISOString(), JSON.stringify({ a: [1, 2] })],
      [str, { scalarType: 'decimal', arity: 'scalar' }, dt, json],
    ),
  )
  t.deepEqual(inserted.columnNames, ['id', 'email', 'score', 'seen', 'data'])
  const [id, email, score, seenOut, data] = inserted.rows[0]
  t.is(typeof id, 'number')
  t.is(email, 'ann@example.com')
  t.is(score, '12.50')
  t.is(new Date(seenOut).getTime(), seen.getTime())
  t.deepEqual(JSON.parse(data), { a: [1, 2] })
  t.is(await adapter.executeRaw(q('UPDATE pr_user SET score = score + 1 WHERE id = $1', [id], [int])), 1)
  const read = await adapter.queryRaw(q('SELECT score, tags FROM pr_user WHERE id = $1', [id], [int]))
  t.is(read.rows[0][0], '13.50')
  t.is(await adapter.executeRaw(q('DELETE FROM pr_user WHERE id = $1', [id], [int])), 1)
})

test.serial('the same rows and column types as PrismaPg on node-postgres', async (t) => {
  const theirsPool = new realPg.Pool({ ...server.clientConfig(), max: 1 })
  const theirs = await new PrismaPg(theirsPool).connect()
  try {
    const sql =
      "SELECT 1::int2 AS a, 2::int4 AS b, 3::int8 AS c, 1.5::float4 AS d, 2.5::float8 AS e, 3.25::numeric AS f, true AS g, 'x'::text AS h, '2020-01-02'::date AS i, '03:04:05.6'::time AS j, '2020-01-02 03:04:05.678'::timestamp AS k, '2020-01-02 03:04:05.678+00'::timestamptz AS l, '{\"a\":1}'::json AS m, '{\"b\": [2]}'::jsonb AS n, '\\x00ff'::bytea AS o, ARRAY[1,2]::int[] AS p, ARRAY['2020-01-02']::date[] AS q, '12.34'::money AS r, gen_random_uuid() IS NOT NULL AS s, NULL::text AS t, ARRAY['{\"z\":1}']::jsonb[] AS u, '04:05:06+02'::timetz AS v, B'101'::bit(3) AS w"
    const a = await adapter.queryRaw(q(sql))
    const b = await theirs.queryRaw(q(sql))
    t.deepEqual(a.columnNames, b.columnNames)
    t.deepEqual(a.columnTypes, b.columnTypes)
    t.deepEqual(a.rows, b.rows)
  } finally {
    await theirs.dispose()
    await theirsPool.end()
  }
})

test.serial('startTransaction: a commit, a rollback, a savepoint', async (t) => {
  const tx = await adapter.startTransaction()
  await tx.executeRaw(q('INSERT INTO pr_log VALUES (1)'))
  await tx.createSavepoint('sp1')
  await tx.executeRaw(q('INSERT INTO pr_log VALUES (2)'))
  await tx.rollbackToSavepoint('sp1')
  await tx.executeRaw(q('COMMIT'))
  await tx.commit()
  const rb = await adapter.startTransaction()
  await rb.executeRaw(q('INSERT INTO pr_log VALUES (3)'))
  await rb.executeRaw(q('ROLLBACK'))
  await rb.rollback()
  const rows = await adapter.queryRaw(q('SELECT n FROM pr_log ORDER BY n'))
  t.deepEqual(rows.rows, [[1]])
})

test.serial("a unique violation surfaces as Prisma's UniqueConstraintViolation with the SQLSTATE", async (t) => {
  await adapter.executeRaw(q('INSERT INTO pr_user (email) VALUES ($1)', ['dup@example.com'], [str]))
  const err = await t.throwsAsync(adapter.executeRaw(q('INSERT INTO pr_user (email) VALUES ($1)', ['dup@example.com'], [str])))
  t.is(err.name, 'DriverAdapterError')
  t.is(err.cause.kind, 'UniqueConstraintViolation')
  t.is(err.cause.originalCode, '23505')
  t.deepEqual(err.cause.constraint, { index: 'pr_user_email_key' })
})

test.serial('a large result, bytea and arrays', async (t) => {
  const big = await adapter.queryRaw(q('SELECT n, md5(n::text) AS h FROM generate_series(1, 20000) AS n'))
  t.is(big.rows.length, 20000)
  await adapter.executeRaw(
    q(
      'INSERT INTO pr_user (email, blob, tags) VALUES ($1, $2, $3)',
      ['bin@example.com', Buffer.from([0, 1, 255]).toString('base64'), ['x', 'y z']],
      [str, { scalarType: 'bytes', arity: 'scalar' }, { scalarType: 'string', arity: 'list' }],
    ),
  )
  const r = await adapter.queryRaw(q('SELECT blob, tags FROM pr_user WHERE email = $1', ['bin@example.com'], [str]))
  t.deepEqual(Buffer.from(r.rows[0][0]), Buffer.from([0, 1, 255]))
  t.deepEqual(r.rows[0][1], ['x', 'y z'])
})
