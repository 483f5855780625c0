'use strict'
// Handlers: a scoped connection that returns to the pool on release or dispose, commits and
// rolls back on an autocommit:false group, keeps its connection through SQL errors and raises
// failures at commit.
// PGDBPOOL_TEST_VIA=pgbouncer (pgbouncer.test.js): the same tests through PgBouncer.
const test = require('ava')

const { DBQueryError } = require('..')
const { guardProcess } = require('./helpers/pg')
const { useTarget } = require('./helpers/target')

guardProcess(test)

const target = useTarget(test)

test('await using / dispose returns the connection; release is idempotent', async (t) => {
  const { pool } = target.makePool({ default: { connection_count: 1 } })
  for (let i = 0; i < 5; i++) {
    const db = pool.handler()
    await db.query('SELECT 1')
    t.is(pool.stats().groups.default.inUse, 1)
    await db[Symbol.asyncDispose]()
    await db.release()
    t.is(pool.stats().groups.default.inUse, 0)
  }
  const released = pool.handler()
  await released.release()
  await t.throwsAsync(released.query('SELECT 1'), { message: /already released/ })
  await pool.close()
})

test('commit and rollback on an autocommit:false group', async (t) => {
  const { pool } = target.makePool({ tx: { connection_count: 1, autocommit: false }, default: { connection_count: 1 } })
  const id = 1000 + target.seq
  const db = pool.handler('tx')
  await db.query('INSERT INTO items VALUES ($1, $2)', [id, 'a'])
  t.true(db.inTransaction)
  // Not visible elsewhere before commit.
  t.is((await pool.query('SELECT count(*)::int AS n FROM items WHERE id = $1', [id])).rows[0].n, 0)
  await db.commit()
  t.false(db.inTransaction)
  t.is((await pool.query('SELECT count(*)::int AS n FROM items WHERE id = $1', [id])).rows[0].n, 1)
  await db.query('DELETE FROM items WHERE id = $1', [id])
  await db.rollback()
  t.is((await pool.query('SELECT count(*)::int AS n FROM items WHERE id = $1', [id])).rows[0].n, 1)
  await db.release()
  await pool.close()
})

test('an exception inside a handler rolls back (withHandler and dispose)', async (t) => {
  const { pool } = target.makePool({ tx: { connection_count: 1, autocommit: false }, default: { connection_count: 1 } })
  const id = 2000 + target.seq
  await t.throwsAsync(
    pool.withHandler('tx', async (db) => {
      await db.query('INSERT INTO items VALUES ($1, $2)', [id, 'x'])
      throw new Error('boom')
    }),
    { message: 'boom' },
  )
  // A handler disposed without commit (the `await using` path) rolls back too.
  const db = pool.handler('tx')
  await db.query('INSERT INTO items VALUES ($1, $2)', [id + 1, 'y'])
  await db[Symbol.asyncDispose]()
  const r = await pool.query('SELECT count(*)::int AS n FROM items WHERE id IN ($1, $2)', [id, id + 1])
  t.is(r.rows[0].n, 0)
  // withHandler commits on success.
  const value = await pool.withHandler('tx', async (db2) => {
    await db2.query('INSERT INTO items VALUES ($1, $2)', [id + 2, 'z'])
    return 'ok'
  })
  t.is(value, 'ok')
  t.is((await pool.query('SELECT count(*)::int AS n FROM items WHERE id = $1', [id + 2])).rows[0].n, 1)
  await pool.close()
})

test('a SQL error keeps the connection (no reconnect), also inside a transaction', async (t) => {
  const { pool } = target.makePool({ tx: { connection_count: 1, autocommit: false }, default: { connection_count: 1 } })
  const db = pool.handler('tx')
  const pid = (await db.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
  const err = await t.throwsAsync(db.query('SELECT * FROM no_such_table'), { instanceOf: DBQueryError })
  t.is(err.sqlState, '42P01')
  t.is(err.severity, 'ERROR')
  t.is(err.code, 'DB_QUERY')
  await db.rollback()
  // Through PgBouncer each transaction may get another server session; connects/disconnects below still hold.
  const pidAfter = (await db.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
  if (!target.viaBouncer) t.is(pidAfter, pid)
  await db.release()
  const stats = pool.stats().groups.tx
  t.is(stats.connects, 1)
  t.is(stats.disconnects, 0)
  // The next handler gets the same healthy connection.
  const db2 = pool.handler('tx')
  const pid2 = (await db2.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
  if (!target.viaBouncer) t.is(pid2, pid) // same reason as above
  t.is(pool.stats().groups.tx.connects, 1)
  await db2.release()
  await pool.close()
})

test('a commit after an error in the transaction is raised, not swallowed', async (t) => {
  const { pool } = target.makePool({ tx: { connection_count: 1, autocommit: false } })
  const db = pool.handler('tx')
  await db.query('SELECT 1')
  await t.throwsAsync(db.query('SELECT 1/0'), { instanceOf: DBQueryError, message: /division by zero/ })
  await t.throwsAsync(db.commit(), { instanceOf: DBQueryError, message: /aborted by an earlier error/ })
  t.false(db.inTransaction)
  await db.release()
  await pool.close()
})

test('a deferred-constraint failure at commit is raised', async (t) => {
  const { pool } = target.makePool({ tx: { connection_count: 1, autocommit: false } })
  const id = 4000 + target.seq
  const db = pool.handler('tx')
  await db.query('INSERT INTO deferred_child VALUES ($1, $2)', [id, 999999])
  const err = await t.throwsAsync(db.commit(), { instanceOf: DBQueryError })
  t.is(err.sqlState, '23503')
  t.is(err.constraint, 'deferred_child_parent_fkey')
  t.is(err.table, 'deferred_child')
  await db.release()
  t.is((await target.server.sql('SELECT count(*)::int AS n FROM deferred_child WHERE id = $1', [id])).rows[0].n, 0)
  await pool.close()
})

test('a one-shot pool query stands alone even on an autocommit:false group', async (t) => {
  const { pool } = target.makePool({ tx: { connection_count: 1, autocommit: false } })
  const id = 6000 + target.seq
  const r = await pool.query('INSERT INTO items VALUES ($1, $2)', [id, 'solo'], { group: 'tx' })
  t.is(r.rowCount, 1)
  t.is((await target.server.sql('SELECT count(*)::int AS n FROM items WHERE id = $1', [id])).rows[0].n, 1)
  await pool.close()
})
