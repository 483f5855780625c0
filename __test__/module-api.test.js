'use strict'
// The module-level API over one default pool per thread: init, new Handler(group), query,
// withHandler, stats, close.
// PGDBPOOL_TEST_VIA=pgbouncer (pgbouncer.test.js): the same tests through PgBouncer.
const test = require('ava')

const lib = require('..')
const { Pool, Handler, withHandler, PoolClosedError, UnconfiguredGroupError } = require('..')
const { guardProcess } = require('./helpers/pg')
const { useTarget } = require('./helpers/target')

guardProcess(test)

const target = useTarget(test)

test.after.always(async () => {
  await lib.close().catch(() => {})
})

test.serial('module API: init, Handler, query, stats, close', async (t) => {
  const pool = await lib.init({
    db: target.endpoint(),
    groups: target.groupsFor({ default: { connection_count: 3 }, tx: { connection_count: 1, autocommit: false } }),
  })
  t.true(pool instanceof Pool)
  t.is(lib.Connection.init, lib.init)

  const db = new Handler('default')
  const r = await db.query('SELECT $1::int AS n, $2::text AS s', [7, 'x'])
  t.deepEqual(r.rows, [{ n: 7, s: 'x' }])
  t.is(r.rowCount, 1)
  t.is(r.command, 'SELECT')
  t.deepEqual(
    r.fields.map((f) => f.name),
    ['n', 's'],
  )
  t.is(r.fields[0].dataTypeID, 23)
  await db[Symbol.asyncDispose]()

  const one = await lib.query('SELECT 1 AS one', [], { group: 'default' })
  t.deepEqual(one.rows, [{ one: 1 }])
  const arr = await lib.query('SELECT 1 AS a, 2 AS b', [], { rowMode: 'array' })
  t.deepEqual(arr.rows, [[1, 2]])
  const pgStyle = await lib.query({ text: 'SELECT $1::int AS v', values: [5] })
  t.deepEqual(pgStyle.rows, [{ v: 5 }])

  const s = lib.stats()
  t.is(s.groups.default.max, 3)
  t.true(s.groups.default.acquires >= 3)
  t.is(s.groups.default.inUse, 0)
  t.is(s.groups.tx.max, 1)

  t.throws(() => new Handler('nope'), { instanceOf: UnconfiguredGroupError, message: /group 'nope' is not configured/ })
  await t.throwsAsync(lib.query('SELECT 1', [], { group: 'nope' }), { instanceOf: UnconfiguredGroupError })

  await lib.close({ timeout: 1000 })
  t.throws(() => new Handler('default'), { instanceOf: PoolClosedError })
  await lib.close()
})

test('module-level withHandler commits on success and rolls back on error', async (t) => {
  await lib.init({
    type: 'non-threaded',
    db: { ...target.endpoint(), application_name: 'wh' },
    groups: target.groupsFor({ w: { connection_count: 1, autocommit: false } }),
  })
  const id = 3000 + target.seq
  await lib.withHandler('w', (db) => db.query('INSERT INTO items VALUES ($1, $2)', [id, 'c']))
  await t.throwsAsync(
    withHandler('w', async (db) => {
      await db.query('INSERT INTO items VALUES ($1, $2)', [id + 1, 'd'])
      throw new Error('nope')
    }),
  )
  const r = await target.server.sql('SELECT id FROM items WHERE id IN ($1, $2) ORDER BY id', [id, id + 1])
  t.deepEqual(
    r.rows.map((x) => x.id),
    [id],
  )
  await lib.close()
})
