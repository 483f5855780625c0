'use strict'
// Session state stays with its user: whatever one user changed on a session is reset before the
// next user gets it (`reset_on_release`, on by default), and the pool's own prepared statements
// survive that and heal after ALTER TABLE / DISCARD.
const test = require('ava')

const { Pool, DBQueryError } = require('..')
const { startServer, waitFor, guardProcess } = require('./helpers/pg')

guardProcess(test)

const viaBouncer = process.env.PGDBPOOL_TEST_VIA === 'pgbouncer'
// In transaction mode PgBouncer hands each transaction to any of its server sessions: session
// state set outside a transaction lands on one of them, and what the next user sees depends on
// PgBouncer, not on this pool (PgBouncer's own server_reset_query is for session mode).
const sessionState = viaBouncer ? test.skip : test

let server
let bouncer
let seq = 0

test.before(async () => {
  server = await startServer()
  if (viaBouncer) {
    const { startPgBouncer } = require('./helpers/pgbouncer')
    bouncer = await startPgBouncer(server, { poolMode: 'transaction', poolSize: 10, settings: { ignore_startup_parameters: 'options' } })
  }
  await server.sql("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lowpriv') THEN CREATE ROLE lowpriv; END IF; END $$")
  await server.sql('CREATE SCHEMA IF NOT EXISTS elsewhere')
})

test.after.always(async () => {
  if (bouncer) await bouncer.destroy()
  if (server) await server.destroy()
})

function makePool(group = {}) {
  const app = `pgdbpool-reset${process.pid}-${++seq}`
  const target = viaBouncer ? bouncer : server
  const cache = viaBouncer ? { statement_cache_size: 0 } : {}
  const pool = new Pool({
    type: 'non-threaded',
    db: { ...target.endpoint, application_name: app },
    groups: { default: { connection_count: 1, ...cache, ...group } },
  })
  return { pool, app }
}

function settled(pool) {
  return waitFor(() => pool.stats().groups.default.inUse === 0, { ms: 5000, what: 'the connection back' })
}

/** Runs `change` as one user, then `look` as the next user of the only connection; returns what `look` saw. */
async function nextUserSees(pool, change, look) {
  const first = pool.handler()
  await change(first)
  const pid = (await first.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
  await first.release()
  await settled(pool)
  const next = pool.handler()
  try {
    const seen = await look(next)
    const samePid = (await next.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
    if (samePid !== pid) throw new Error('the next user got another session; the test proves nothing')
    return seen
  } finally {
    await next.release()
  }
}

const one = async (db, sql) => Object.values((await db.query(sql)).rows[0])[0]

sessionState('SET ROLE does not travel to the next user', async (t) => {
  const { pool } = makePool()
  const seen = await nextUserSees(
    pool,
    (db) => db.query('SET ROLE lowpriv'),
    (db) => one(db, 'SELECT current_user'),
  )
  t.is(seen, 'postgres')
  t.true(pool.stats().groups.default.resets >= 1)
  await pool.close()
})

sessionState('SET SESSION AUTHORIZATION does not travel to the next user', async (t) => {
  const { pool } = makePool()
  const seen = await nextUserSees(
    pool,
    (db) => db.query('SET SESSION AUTHORIZATION lowpriv'),
    (db) => one(db, "SELECT session_user || '/' || current_user"),
  )
  t.is(seen, 'postgres/postgres')
  await pool.close()
})

sessionState('search_path, TimeZone and other settings are reset', async (t) => {
  const { pool } = makePool()
  const defaults = await nextUserSees(
    pool,
    async () => {},
    async (db) => [
      await one(db, "SELECT current_setting('search_path')"),
      await one(db, "SELECT current_setting('TimeZone')"),
      await one(db, "SELECT current_setting('work_mem')"),
    ],
  )
  const seen = await nextUserSees(
    pool,
    async (db) => {
      await db.query('SET search_path = elsewhere')
      await db.query("SET TimeZone = 'Asia/Tokyo'")
      await db.query("SELECT set_config('work_mem', '77MB', false)")
    },
    async (db) => [
      await one(db, "SELECT current_setting('search_path')"),
      await one(db, "SELECT current_setting('TimeZone')"),
      await one(db, "SELECT current_setting('work_mem')"),
    ],
  )
  t.deepEqual(seen, defaults)
  t.not(seen[0], 'elsewhere')
  t.not(seen[1], 'Asia/Tokyo')
  t.not(seen[2], '77MB')
  await pool.close()
})

sessionState('a setting changed by a one-shot statement is reset too', async (t) => {
  const { pool } = makePool()
  await pool.query('SET search_path = elsewhere')
  const db = pool.handler()
  t.not(await one(db, "SELECT current_setting('search_path')"), 'elsewhere')
  await db.release()
  // A plain one-shot read needs no reset unless the server reports a changed setting, which it
  // does for search_path from PostgreSQL 18 on (TimeZone, DateStyle, application_name: always).
  const version = Number((await pool.query('SHOW server_version_num')).rows[0].server_version_num)
  const reported = version >= 180000 ? 'search_path' : 'TimeZone'
  const before = (await pool.query(`SELECT current_setting('${reported}') AS v`)).rows[0].v
  await pool.query(`SELECT set_config('${reported}', $1, false)`, [reported === 'search_path' ? 'elsewhere' : 'Asia/Tokyo'])
  t.is((await pool.query(`SELECT current_setting('${reported}') AS v`)).rows[0].v, before)
  await pool.close()
})

sessionState('temp tables are dropped', async (t) => {
  const { pool } = makePool()
  const seen = await nextUserSees(
    pool,
    (db) => db.query('CREATE TEMP TABLE scratch (a int)'),
    (db) => one(db, "SELECT to_regclass('pg_temp.scratch') IS NULL"),
  )
  t.true(seen)
  await pool.close()
})

sessionState('advisory locks are released', async (t) => {
  const { pool } = makePool()
  await nextUserSees(
    pool,
    (db) => db.query('SELECT pg_advisory_lock(4242)'),
    async () => {},
  )
  const free = await server.admin(async (c) => {
    const r = await c.query('SELECT pg_try_advisory_lock(4242) AS got')
    await c.query('SELECT pg_advisory_unlock_all()')
    return r.rows[0].got
  })
  t.true(free, 'another session can take the lock')
  await pool.close()
})

sessionState('LISTEN is undone: the next user is subscribed to nothing', async (t) => {
  const { pool } = makePool()
  const channels = await nextUserSees(
    pool,
    (db) => db.query('LISTEN reset_channel'),
    async (db) => (await db.query('SELECT pg_listening_channels() AS c')).rows.map((r) => r.c),
  )
  t.deepEqual(channels, [])
  await pool.close()
})

sessionState("PREPAREd statements and WITH HOLD cursors are gone; the pool's own statements stay", async (t) => {
  const { pool } = makePool()
  const seen = await nextUserSees(
    pool,
    async (db) => {
      await db.query('SELECT $1::int AS warm', [1])
      await db.query('PREPARE users_stmt AS SELECT 1')
      await db.query('DECLARE held CURSOR WITH HOLD FOR SELECT 1')
    },
    async (db) => ({
      userStatements: await one(db, "SELECT count(*)::int FROM pg_prepared_statements WHERE name = 'users_stmt'"),
      cursors: await one(db, "SELECT count(*)::int FROM pg_cursors WHERE name = 'held'"),
      warm: (await db.query('SELECT $1::int AS warm', [2])).rows[0].warm,
    }),
  )
  t.deepEqual(seen, { userStatements: 0, cursors: 0, warm: 2 })
  await pool.close()
})

sessionState("the pool's prepared statements survive a reset (no re-prepare)", async (t) => {
  const { pool } = makePool()
  const names = await nextUserSees(
    pool,
    async (db) => {
      await db.query('SELECT $1::int + 1 AS x', [1])
      await db.query('SET search_path = elsewhere')
    },
    async (db) => (await db.query('SELECT name FROM pg_prepared_statements ORDER BY name')).rows.map((r) => r.name),
  )
  t.true(names.length >= 1, `the pool's statements are still prepared: ${names}`)
  await pool.close()
})

sessionState('client_encoding other than UTF8 is refused and reset; text stays correct', async (t) => {
  const { pool } = makePool()
  const db = pool.handler()
  await t.throwsAsync(db.query("SET client_encoding = 'LATIN1'"), { message: /client_encoding/ })
  t.is(await one(db, "SELECT 'é€ü' AS s"), 'é€ü')
  t.is(await one(db, 'SHOW client_encoding'), 'UTF8')
  await db.release()
  await t.throwsAsync(pool.query("SELECT set_config('client_encoding', 'LATIN1', false)"), { message: /client_encoding/ })
  t.is((await pool.query("SELECT 'é€ü' AS s")).rows[0].s, 'é€ü')
  t.is((await pool.query('SHOW client_encoding')).rows[0].client_encoding, 'UTF8')
  await pool.close()
})

sessionState('reset_on_release: false keeps session state between users', async (t) => {
  const { pool } = makePool({ reset_on_release: false })
  const seen = await nextUserSees(
    pool,
    (db) => db.query('SET search_path = elsewhere'),
    (db) => one(db, "SELECT current_setting('search_path')"),
  )
  t.is(seen, 'elsewhere')
  t.is(pool.stats().groups.default.resets, 0)
  await pool.close()
})

sessionState('a session only one-shot plain statements used needs no reset', async (t) => {
  const { pool } = makePool()
  for (let i = 0; i < 5; i++) await pool.query('SELECT $1::int AS n', [i])
  t.is(pool.stats().groups.default.resets, 0)
  await pool.close()
})

test('ALTER TABLE between two runs of a cached statement: the second run has the new shape', async (t) => {
  const { pool } = makePool()
  const table = `shape_${seq}`
  await server.sql(`CREATE TABLE ${table} (a int)`)
  await server.sql(`INSERT INTO ${table} VALUES (1)`)
  t.deepEqual((await pool.query(`SELECT * FROM ${table}`)).rows, [{ a: 1 }])
  await server.sql(`ALTER TABLE ${table} ADD COLUMN b text DEFAULT 'x'`)
  t.deepEqual((await pool.query(`SELECT * FROM ${table}`)).rows, [{ a: 1, b: 'x' }])
  const db = pool.handler()
  t.deepEqual((await db.query(`SELECT * FROM ${table} WHERE a = $1`, [1])).rows, [{ a: 1, b: 'x' }])
  await server.sql(`ALTER TABLE ${table} ADD COLUMN c int DEFAULT 3`)
  t.deepEqual((await db.query(`SELECT * FROM ${table} WHERE a = $1`, [1])).rows, [{ a: 1, b: 'x', c: 3 }])
  await db.release()
  await pool.close()
})

test('DISCARD ALL between two runs of a cached statement: the second run works', async (t) => {
  const { pool } = makePool()
  const db = pool.handler()
  t.deepEqual((await db.query('SELECT $1::int AS v', [1])).rows, [{ v: 1 }])
  await db.query('DISCARD ALL')
  t.deepEqual((await db.query('SELECT $1::int AS v', [2])).rows, [{ v: 2 }])
  await db.release()
  t.deepEqual((await pool.query('SELECT $1::int AS v', [3])).rows, [{ v: 3 }])
  await pool.close()
})

test('inside a transaction a changed result type is a DBQueryError 0A000, and the next transaction works', async (t) => {
  if (viaBouncer) return t.pass('statement cache off through PgBouncer: nothing cached to go stale')
  const { pool } = makePool({ autocommit: false })
  const table = `shape_tx_${seq}`
  await server.sql(`CREATE TABLE ${table} (a int)`)
  await server.sql(`INSERT INTO ${table} VALUES (1)`)
  const db = pool.handler()
  t.deepEqual((await db.query(`SELECT * FROM ${table}`)).rows, [{ a: 1 }])
  await db.commit()
  await server.sql(`ALTER TABLE ${table} ADD COLUMN b int DEFAULT 2`)
  const err = await t.throwsAsync(db.query(`SELECT * FROM ${table}`), { instanceOf: DBQueryError })
  t.is(err.sqlState, '0A000')
  await db.rollback()
  t.deepEqual((await db.query(`SELECT * FROM ${table}`)).rows, [{ a: 1, b: 2 }])
  await db.commit()
  await db.release()
  await pool.close()
})
