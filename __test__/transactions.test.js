'use strict'
// Transaction state comes from the server (the status byte of ReadyForQuery), never from the
// SQL text: savepoints, chained commits, DO blocks and multi-statement strings must leave
// `inTransaction`, `commit()` and the release decision agreeing with the server, and no session
// that is inside a transaction may reach another user.
const test = require('ava')

const { Pool, DBQueryError } = require('..')
const { startServer, waitFor, guardProcess } = require('./helpers/pg')

guardProcess(test)

// PGDBPOOL_TEST_VIA=pgbouncer (pgbouncer-transactions.test.js): pools go through PgBouncer in
// transaction mode with the statement cache off; checks on the server go straight to it.
const viaBouncer = process.env.PGDBPOOL_TEST_VIA === 'pgbouncer'

let server
let bouncer
let seq = 0

test.before(async () => {
  server = await startServer()
  if (viaBouncer) {
    const { startPgBouncer } = require('./helpers/pgbouncer')
    bouncer = await startPgBouncer(server, { poolMode: 'transaction', poolSize: 10, settings: { ignore_startup_parameters: 'options' } })
  }
  await server.sql('CREATE TABLE IF NOT EXISTS tx_rows (tag text, n int)')
})

test.after.always(async () => {
  if (bouncer) await bouncer.destroy()
  if (server) await server.destroy()
})

/** A pool of its own (application_name tells its sessions apart on the server). */
function makePool(groups) {
  const app = `pgdbpool-tx${process.pid}-${++seq}`
  const tag = `t${seq}`
  const target = viaBouncer ? bouncer : server
  const cache = viaBouncer ? { statement_cache_size: 0 } : {}
  const withCache = Object.fromEntries(Object.entries(groups).map(([name, g]) => [name, { ...cache, ...g }]))
  const pool = new Pool({ type: 'non-threaded', db: { ...target.endpoint, application_name: app }, groups: withCache })
  return { pool, app, tag }
}

/** What the server has committed for `tag`, in order. */
async function committed(tag) {
  const r = await server.sql('SELECT n FROM tx_rows WHERE tag = $1 ORDER BY n', [tag])
  return r.rows.map((row) => row.n)
}

/** Sessions of `app` the server shows inside a transaction (open or failed). */
async function idleInTransaction(app) {
  const r = await server.sql("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND state LIKE 'idle in transaction%'", [app])
  return r.rows[0].n
}

/** Waits until the pool has its connections back (a release with an open transaction rolls back in the background). */
function settled(pool, group = 'default') {
  return waitFor(() => pool.stats().groups[group].inUse === 0, { ms: 5000, what: `group ${group} idle` })
}

test('ROLLBACK TO SAVEPOINT keeps the transaction: commit() commits what is left', async (t) => {
  const { pool, app, tag } = makePool({ default: { connection_count: 1, autocommit: false } })
  const db = pool.handler()
  await db.query('BEGIN')
  await db.query('INSERT INTO tx_rows VALUES ($1, 1)', [tag])
  await db.query('SAVEPOINT a')
  await db.query('INSERT INTO tx_rows VALUES ($1, 2)', [tag])
  await db.query('ROLLBACK TO SAVEPOINT a')
  t.true(db.inTransaction, 'the transaction is still open after ROLLBACK TO SAVEPOINT')
  await db.commit()
  t.false(db.inTransaction)
  await db.release()
  t.deepEqual(await committed(tag), [1])
  await settled(pool)
  t.is(await idleInTransaction(app), 0)
  await pool.close()
})

test('the same savepoint sequence on an autocommit:false group without an explicit BEGIN', async (t) => {
  const { pool, app, tag } = makePool({ default: { connection_count: 1, autocommit: false } })
  const db = pool.handler()
  await db.query('INSERT INTO tx_rows VALUES ($1, 1)', [tag])
  await db.query('SAVEPOINT a')
  await db.query('INSERT INTO tx_rows VALUES ($1, 2)', [tag])
  await db.query('ROLLBACK TO SAVEPOINT a')
  await db.query('INSERT INTO tx_rows VALUES ($1, 3)', [tag])
  await db.commit()
  await db.release()
  t.deepEqual(await committed(tag), [1, 3])
  await settled(pool)
  t.is(await idleInTransaction(app), 0)
  await pool.close()
})

test('RELEASE SAVEPOINT and nested savepoints', async (t) => {
  const { pool, app, tag } = makePool({ default: { connection_count: 1 } })
  const db = pool.handler()
  await db.query('BEGIN')
  await db.query('INSERT INTO tx_rows VALUES ($1, 1)', [tag])
  await db.query('SAVEPOINT outer_sp')
  await db.query('INSERT INTO tx_rows VALUES ($1, 2)', [tag])
  await db.query('SAVEPOINT inner_sp')
  await db.query('INSERT INTO tx_rows VALUES ($1, 3)', [tag])
  await db.query('RELEASE SAVEPOINT inner_sp')
  t.true(db.inTransaction)
  await db.query('SAVEPOINT inner2')
  await t.throwsAsync(db.query('INSERT INTO tx_rows VALUES ($1, 1/0)', [tag]), { instanceOf: DBQueryError })
  t.true(db.inTransaction, 'a failed transaction is still a transaction')
  await db.query('ROLLBACK TO SAVEPOINT inner2')
  await db.query('RELEASE SAVEPOINT outer_sp')
  await db.commit()
  t.false(db.inTransaction)
  await db.release()
  t.deepEqual(await committed(tag), [1, 2, 3])
  await settled(pool)
  t.is(await idleInTransaction(app), 0)
  await pool.close()
})

test('COMMIT AND CHAIN and ROLLBACK AND CHAIN leave a transaction open', async (t) => {
  const { pool, app, tag } = makePool({ default: { connection_count: 1 } })
  const db = pool.handler()
  await db.query('BEGIN')
  await db.query('INSERT INTO tx_rows VALUES ($1, 1)', [tag])
  await db.query('COMMIT AND CHAIN')
  t.true(db.inTransaction, 'COMMIT AND CHAIN starts the next transaction')
  await db.query('INSERT INTO tx_rows VALUES ($1, 2)', [tag])
  await db.query('ROLLBACK AND CHAIN')
  t.true(db.inTransaction, 'ROLLBACK AND CHAIN starts the next transaction')
  await db.query('INSERT INTO tx_rows VALUES ($1, 3)', [tag])
  await db.commit()
  t.false(db.inTransaction)
  await db.release()
  t.deepEqual(await committed(tag), [1, 3])
  await settled(pool)
  t.is(await idleInTransaction(app), 0)
  await pool.close()
})

test('START TRANSACTION, END and ABORT are transaction control like BEGIN, COMMIT and ROLLBACK', async (t) => {
  const { pool, app, tag } = makePool({ default: { connection_count: 1 } })
  const db = pool.handler()
  await db.query('START TRANSACTION ISOLATION LEVEL REPEATABLE READ')
  t.true(db.inTransaction)
  t.is((await db.query('SHOW transaction_isolation')).rows[0].transaction_isolation, 'repeatable read')
  await db.query('INSERT INTO tx_rows VALUES ($1, 1)', [tag])
  await db.query('END')
  t.false(db.inTransaction)
  await db.query('START TRANSACTION')
  await db.query('INSERT INTO tx_rows VALUES ($1, 2)', [tag])
  await db.query('ABORT')
  t.false(db.inTransaction)
  // Left open at release: rolled back before anyone else gets the session.
  await db.query('START TRANSACTION')
  await db.query('INSERT INTO tx_rows VALUES ($1, 3)', [tag])
  t.true(db.inTransaction)
  await db.release()
  await settled(pool)
  t.deepEqual(await committed(tag), [1])
  t.is(await idleInTransaction(app), 0)
  await pool.close()
})

test('a transaction opened by a multi-statement string is seen, and rolled back at release', async (t) => {
  const { pool, app, tag } = makePool({ default: { connection_count: 1 } })
  const db = pool.handler()
  await db.query(`INSERT INTO tx_rows VALUES ('${tag}', 1); BEGIN; INSERT INTO tx_rows VALUES ('${tag}', 2)`)
  t.true(db.inTransaction, 'the string left a transaction open')
  await db.release()
  await settled(pool)
  // A BEGIN inside a multi-statement string takes the statements before it into the
  // transaction it opens (PostgreSQL's rule): nothing of the string was committed.
  t.deepEqual(await committed(tag), [])
  t.is(await idleInTransaction(app), 0)
  // The next user of the only connection runs outside any transaction: its write is committed.
  await pool.query('INSERT INTO tx_rows VALUES ($1, 3)', [tag])
  t.deepEqual(await committed(tag), [3])
  const next = pool.handler()
  await next.query('SELECT 1')
  t.false(next.inTransaction)
  await next.release()
  await pool.close()
})

test('a multi-statement string that commits what it began leaves no transaction', async (t) => {
  const { pool, tag } = makePool({ default: { connection_count: 1 } })
  const db = pool.handler()
  await db.query(`BEGIN; INSERT INTO tx_rows VALUES ('${tag}', 1); COMMIT`)
  t.false(db.inTransaction)
  await db.release()
  t.deepEqual(await committed(tag), [1])
  await pool.close()
})

test('a DO block that commits inside itself leaves no transaction', async (t) => {
  const { pool, app, tag } = makePool({ default: { connection_count: 1 } })
  const db = pool.handler()
  await db.query(`DO $$ BEGIN INSERT INTO tx_rows VALUES ('${tag}', 1); COMMIT; INSERT INTO tx_rows VALUES ('${tag}', 2); END $$`)
  t.false(db.inTransaction)
  await db.query('BEGIN')
  await db.query(`DO $$ BEGIN INSERT INTO tx_rows VALUES ('${tag}', 3); END $$`)
  t.true(db.inTransaction, 'a DO block inside BEGIN stays in the transaction')
  await db.release()
  await settled(pool)
  t.deepEqual(await committed(tag), [1, 2])
  t.is(await idleInTransaction(app), 0)
  await pool.close()
})

test('commit() of a transaction the user ended in SQL sends nothing and loses nothing', async (t) => {
  const { pool, tag } = makePool({ default: { connection_count: 1, autocommit: false } })
  const db = pool.handler()
  await db.query('INSERT INTO tx_rows VALUES ($1, 1)', [tag])
  await db.query('COMMIT')
  t.false(db.inTransaction)
  await db.commit()
  // The next statement of an autocommit:false handler opens a new transaction.
  await db.query('INSERT INTO tx_rows VALUES ($1, 2)', [tag])
  t.true(db.inTransaction)
  await db.rollback()
  await db.release()
  t.deepEqual(await committed(tag), [1])
  await pool.close()
})

test('commit() of a failed transaction is an error, and the session is usable after it', async (t) => {
  const { pool, tag } = makePool({ default: { connection_count: 1, autocommit: false } })
  const db = pool.handler()
  await db.query('INSERT INTO tx_rows VALUES ($1, 1)', [tag])
  await t.throwsAsync(db.query('SELECT 1/0'), { instanceOf: DBQueryError })
  t.true(db.inTransaction)
  await t.throwsAsync(db.commit(), { message: /aborted|rolled back/ })
  t.false(db.inTransaction)
  await db.query('INSERT INTO tx_rows VALUES ($1, 2)', [tag])
  await db.commit()
  await db.release()
  t.deepEqual(await committed(tag), [2])
  await pool.close()
})

test('BEGIN through the prepared (extended) protocol, and a PREPAREd statement run with EXECUTE', async (t) => {
  const { pool, app, tag } = makePool({ default: { connection_count: 1 } })
  const db = pool.handler()
  // With parameters the statement goes through Parse/Bind/Execute; BEGIN has none, so this checks the plain path too.
  await db.query('BEGIN')
  t.true(db.inTransaction)
  await db.query(`PREPARE tx_ins(int) AS INSERT INTO tx_rows VALUES ('${tag}', $1)`)
  await db.query('EXECUTE tx_ins(1)')
  await db.query('COMMIT')
  t.false(db.inTransaction)
  // Through PgBouncer in transaction mode an SQL-level PREPARE lives on whichever server
  // session ran that transaction: the next transaction may not find it.
  if (!viaBouncer) {
    await db.query('EXECUTE tx_ins(2)')
    t.false(db.inTransaction)
  }
  await db.release()
  t.deepEqual(await committed(tag), viaBouncer ? [1] : [1, 2])
  await settled(pool)
  t.is(await idleInTransaction(app), 0)
  await pool.close()
})

for (const sql of ['BEGIN', 'BEGIN; SELECT 1/0', 'SELECT 1; BEGIN', 'START TRANSACTION']) {
  test(`a one-shot ${JSON.stringify(sql)} leaves nothing open for the next user`, async (t) => {
    const { pool, app, tag } = makePool({ default: { connection_count: 1 } })
    await pool.query(sql).catch(() => {})
    // The only connection: the next statement must run outside any transaction.
    await pool.query('INSERT INTO tx_rows VALUES ($1, 1)', [tag])
    t.deepEqual(await committed(tag), [1], 'the next write was committed')
    const db = pool.handler()
    const r = await db.query('SELECT 1 AS ok')
    t.deepEqual(r.rows, [{ ok: 1 }])
    t.false(db.inTransaction)
    await db.release()
    await settled(pool)
    t.is(await idleInTransaction(app), 0)
    t.true(pool.stats().groups.default.releaseRollbacks >= (sql.includes('BEGIN') || sql.includes('START') ? 1 : 0))
    await pool.close()
  })
}

test('stats count the rollbacks made at release', async (t) => {
  const { pool } = makePool({ default: { connection_count: 1 } })
  const before = pool.stats().groups.default.releaseRollbacks
  t.is(typeof before, 'number')
  const db = pool.handler()
  await db.query('BEGIN')
  await db.release()
  await settled(pool)
  t.is(pool.stats().groups.default.releaseRollbacks, before + 1)
  await pool.close()
})
