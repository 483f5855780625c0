'use strict'
const test = require('ava')
const { inspect } = require('node:util')

const lib = require('..')
const { Pool, Handler, withHandler, DBQueryError, DBConnectionError, PoolTimeoutError, PoolClosedError, UnconfiguredGroupError, DBOfflineError } = lib
const { startServer, waitFor, guardProcess, PASSWORD } = require('./helpers/pg')

guardProcess(test)

// PGDBPOOL_TEST_VIA=pgbouncer: pools connect through PgBouncer in transaction mode with the
// statement cache off (pgbouncer.test.js sets it); admin and inspection queries (server.sql,
// pg_stat_activity, pg_terminate_backend) still go straight to the server.
const viaBouncer = process.env.PGDBPOOL_TEST_VIA === 'pgbouncer'

let server
let bouncer
// Row ids derive from seq; through PgBouncer they start higher, so both variants can share an external server.
let seq = viaBouncer ? 500 : 0

test.before(async () => {
  server = await startServer()
  if (viaBouncer) {
    const { startPgBouncer } = require('./helpers/pgbouncer')
    // `options` carries query_timeout/session_tmp_buffer at startup; PgBouncer rejects it unless told to ignore it.
    bouncer = await startPgBouncer(server, { poolMode: 'transaction', poolSize: 20, settings: { ignore_startup_parameters: 'options' } })
    // The backend-killing stress test gets a database (and so a PgBouncer server pool) of its own.
    if ((await server.sql("SELECT 1 FROM pg_database WHERE datname = 'pgdbpool_kill'")).rowCount === 0) await server.sql('CREATE DATABASE pgdbpool_kill')
  }
  await server.sql('CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, name text)')
  await server.sql(`CREATE TABLE IF NOT EXISTS deferred_parent (id int PRIMARY KEY)`)
  await server.sql(`CREATE TABLE IF NOT EXISTS deferred_child (id int PRIMARY KEY, parent int REFERENCES deferred_parent(id) DEFERRABLE INITIALLY DEFERRED)`)
})

test.after.always('pgbouncer stayed up', (t) => {
  if (bouncer && !bouncer.running) t.fail(`pgbouncer exited during the run; its log:\n${bouncer.log()}`)
  t.pass()
})

test.after.always(async () => {
  await lib.close().catch(() => {})
  if (bouncer) await bouncer.destroy()
  if (server) await server.destroy()
})

/** Where pools connect: the server, or PgBouncer in front of it. */
const target = () => (viaBouncer ? bouncer : server)
const endpoint = () => target().endpoint
const targetUrl = () => {
  const e = endpoint()
  return `postgres://${e.user}:${e.pass}@${e.host}:${e.port}/${e.name}`
}

/** `groups` as given; through PgBouncer each group also gets `statement_cache_size: 0`. */
function groupsFor(groups) {
  if (!viaBouncer) return groups
  return Object.fromEntries(Object.entries(groups).map(([name, g]) => [name, { statement_cache_size: 0, ...g }]))
}

/**
 * Sessions of `app` the pool holds: server sessions, or through PgBouncer its client
 * connections to PgBouncer (server connections there are shared and outlive the pool).
 */
async function sessions(app) {
  if (!viaBouncer) return server.sessions(app)
  const clients = await bouncer.console('SHOW CLIENTS')
  return clients.rows.filter((c) => c.application_name === app).length
}

/** A private pool with its own application_name, so server-side counts are per test. */
function makePool(groups = { default: { connection_count: 2 } }, endpointExtra = {}) {
  const app = `pgdbpool-t${process.pid}-${++seq}`
  const pool = new Pool({ type: 'non-threaded', db: { ...endpoint(), application_name: app, ...endpointExtra }, groups: groupsFor(groups) })
  return { pool, app }
}

test.serial('module API: init, Handler, query, stats, close', async (t) => {
  const pool = await lib.init({ db: endpoint(), groups: groupsFor({ default: { connection_count: 3 }, tx: { connection_count: 1, autocommit: false } }) })
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

test('await using / dispose returns the connection; release is idempotent', async (t) => {
  const { pool } = makePool({ default: { connection_count: 1 } })
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
  const { pool } = makePool({ tx: { connection_count: 1, autocommit: false }, default: { connection_count: 1 } })
  const id = 1000 + seq
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

test('Python defect: an exception inside a handler rolls back (withHandler and dispose)', async (t) => {
  const { pool } = makePool({ tx: { connection_count: 1, autocommit: false }, default: { connection_count: 1 } })
  const id = 2000 + seq
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

test('module-level withHandler commits on success and rolls back on error', async (t) => {
  await lib.init({ type: 'non-threaded', db: { ...endpoint(), application_name: 'wh' }, groups: groupsFor({ w: { connection_count: 1, autocommit: false } }) })
  const id = 3000 + seq
  await lib.withHandler('w', (db) => db.query('INSERT INTO items VALUES ($1, $2)', [id, 'c']))
  await t.throwsAsync(
    withHandler('w', async (db) => {
      await db.query('INSERT INTO items VALUES ($1, $2)', [id + 1, 'd'])
      throw new Error('nope')
    }),
  )
  const r = await server.sql('SELECT id FROM items WHERE id IN ($1, $2) ORDER BY id', [id, id + 1])
  t.deepEqual(
    r.rows.map((x) => x.id),
    [id],
  )
  await lib.close()
})

test('Python defect: a SQL error keeps the connection (no reconnect), also inside a transaction', async (t) => {
  const { pool } = makePool({ tx: { connection_count: 1, autocommit: false }, default: { connection_count: 1 } })
  const db = pool.handler('tx')
  const pid = (await db.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
  const err = await t.throwsAsync(db.query('SELECT * FROM no_such_table'), { instanceOf: DBQueryError })
  t.is(err.sqlState, '42P01')
  t.is(err.severity, 'ERROR')
  t.is(err.code, 'DB_QUERY')
  await db.rollback()
  // Through PgBouncer each transaction may get another server session; connects/disconnects below still hold.
  const pidAfter = (await db.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
  if (!viaBouncer) t.is(pidAfter, pid)
  await db.release()
  const stats = pool.stats().groups.tx
  t.is(stats.connects, 1)
  t.is(stats.disconnects, 0)
  // The next handler gets the same healthy connection.
  const db2 = pool.handler('tx')
  const pid2 = (await db2.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
  if (!viaBouncer) t.is(pid2, pid) // same reason as above
  t.is(pool.stats().groups.tx.connects, 1)
  await db2.release()
  await pool.close()
})

test('a commit after an error in the transaction is raised, not swallowed', async (t) => {
  const { pool } = makePool({ tx: { connection_count: 1, autocommit: false } })
  const db = pool.handler('tx')
  await db.query('SELECT 1')
  await t.throwsAsync(db.query('SELECT 1/0'), { instanceOf: DBQueryError, message: /division by zero/ })
  await t.throwsAsync(db.commit(), { instanceOf: DBQueryError, message: /aborted by an earlier error/ })
  t.false(db.inTransaction)
  await db.release()
  await pool.close()
})

test('Python defect: a deferred-constraint failure at commit is raised', async (t) => {
  const { pool } = makePool({ tx: { connection_count: 1, autocommit: false } })
  const id = 4000 + seq
  const db = pool.handler('tx')
  await db.query('INSERT INTO deferred_child VALUES ($1, $2)', [id, 999999])
  const err = await t.throwsAsync(db.commit(), { instanceOf: DBQueryError })
  t.is(err.sqlState, '23503')
  t.is(err.constraint, 'deferred_child_parent_fkey')
  t.is(err.table, 'deferred_child')
  await db.release()
  t.is((await server.sql('SELECT count(*)::int AS n FROM deferred_child WHERE id = $1', [id])).rows[0].n, 0)
  await pool.close()
})

test('Python defect: waiting is FIFO and bounded by acquire_timeout', async (t) => {
  const { pool } = makePool({ default: { connection_count: 1, acquire_timeout: 30000 }, short: { connection_count: 1, acquire_timeout: 150 } })
  const holder = pool.handler()
  await holder.acquire()
  const order = []
  const waiters = []
  for (const n of [1, 2, 3]) {
    const db = pool.handler()
    waiters.push(
      db.acquire().then(async () => {
        order.push(n)
        await db.release()
      }),
    )
    // Queue position is taken when the checkout reaches the pool; make arrival order explicit.
    await waitFor(() => pool.stats().groups.default.waiting === n, { what: `${n} waiters` })
  }
  await holder.release()
  await Promise.all(waiters)
  t.deepEqual(order, [1, 2, 3])

  // `busy` takes the group's only connection, opened by init; under load (and through PgBouncer,
  // one more login) it may still be opening, and waiting for it must not eat the 150 ms.
  await pool.ready
  const busy = pool.handler('short')
  await busy.acquire()
  const started = Date.now()
  const err = await t.throwsAsync(pool.handler('short').acquire(), { instanceOf: PoolTimeoutError })
  t.regex(err.message, /acquire_timeout \(150 ms\)/)
  t.true(Date.now() - started >= 100)
  // The core's acquire request made for the waiter times out too; once its reply is in, the
  // timeout counts once.
  await waitFor(() => pool.stats().groups.short.timeouts === 1, { what: 'one timeout' })
  t.is(pool.stats().groups.short.waiting, 0)
  await busy.release()
  // The slot is still usable after a timed-out waiter.
  const again = pool.handler('short')
  await again.query('SELECT 1')
  await again.release()
  await pool.close()
})

test('max_waiting fails fast', async (t) => {
  const { pool } = makePool({ default: { connection_count: 1, max_waiting: 1, acquire_timeout: 30000 } })
  const holder = pool.handler()
  await holder.acquire()
  const waiting = pool.handler().acquire()
  await waitFor(() => pool.stats().groups.default.waiting === 1)
  await t.throwsAsync(pool.handler().acquire(), { instanceOf: PoolTimeoutError, message: /max_waiting/ })
  await holder.release()
  await waiting
  t.is(pool.stats().groups.default.inUse, 1)
  await pool.close({ timeout: 0 })
})

test('Python defect: a backend killed mid-query fails that query only, and the slot is reused', async (t) => {
  const { pool, app } = makePool({ default: { connection_count: 1, acquire_timeout: 5000 } })
  const db = pool.handler()
  let pid = (await db.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
  const slow = db.query('SELECT pg_sleep(30)')
  slow.catch(() => {}) // handled below, after the kill
  if (viaBouncer) {
    // Through PgBouncer the next autocommit statement may run on another server session: kill the one sleeping.
    pid = await waitFor(
      async () =>
        (await server.sql("SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' AND query LIKE '%pg_sleep(30)%'", [app])).rows[0]
          ?.pid,
    )
  }
  await waitFor(
    async () => (await server.sql("SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_sleep%'", [pid])).rows[0].n === 1,
  )
  await server.sql('SELECT pg_terminate_backend($1)', [pid])
  const err = await t.throwsAsync(slow)
  t.true(err instanceof DBConnectionError || err instanceof DBQueryError, err.name)
  // The handler never silently gets another connection.
  await t.throwsAsync(db.query('SELECT 1'), { instanceOf: DBConnectionError })
  await t.throwsAsync(db.commit(), { instanceOf: DBConnectionError })
  await db.release()
  // The slot was not leaked: a new handler gets a fresh connection.
  const db2 = pool.handler()
  const pid2 = (await db2.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
  t.not(pid2, pid)
  await db2.release()
  const s = pool.stats().groups.default
  t.is(s.size, 1)
  t.is(s.inUse, 0)
  await pool.close()
})

test('Python defect: killed backends never make two handlers share a connection', async (t) => {
  // Through PgBouncer a backend pid names a handler's connection only inside a transaction, so
  // each handler runs in one (autocommit: false); and the test gets a database, hence a
  // PgBouncer server pool, of its own, so the backends it kills serve no other test.
  const group = { connection_count: 4, acquire_timeout: 20000, ping_after_idle: 0, ...(viaBouncer && { autocommit: false }) }
  const { pool, app } = makePool({ default: group }, viaBouncer ? { name: 'pgdbpool_kill' } : {})
  const inUse = new Set()
  let shared = 0
  let completed = 0
  let failed = 0
  let stop = false
  const killer = (async () => {
    while (!stop) {
      await server
        .sql('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid() ORDER BY random() LIMIT 1', [app])
        .catch(() => {})
      await new Promise((r) => setTimeout(r, 15))
    }
  })()
  const worker = async () => {
    for (let i = 0; i < 40; i++) {
      const db = pool.handler()
      let pid
      try {
        pid = (await db.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
        if (inUse.has(pid)) shared++
        inUse.add(pid)
        await db.query('SELECT pg_sleep(0.002)')
        const again = (await db.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
        if (again !== pid) shared++
        completed++
      } catch (e) {
        if (!(e instanceof DBConnectionError || e instanceof DBQueryError)) throw e
        failed++
      } finally {
        if (pid !== undefined) inUse.delete(pid)
        await db.release()
      }
    }
  }
  await Promise.all([worker(), worker(), worker(), worker(), worker(), worker()])
  stop = true
  await killer
  t.is(shared, 0)
  t.true(completed > 0)
  t.log(`completed ${completed}, failed ${failed}`)
  // A handler released inside a transaction (autocommit: false, through PgBouncer) is rolled
  // back in the background first, and its connection counts as in use until that is done.
  if (viaBouncer) await waitFor(() => pool.stats().groups.default.inUse === 0, { what: 'inUse = 0' })
  const s = pool.stats().groups.default
  t.is(s.inUse, 0)
  t.true(s.size <= 4)
  await waitFor(async () => (await sessions(app)) <= 4, { what: 'sessions <= 4' })
  await pool.close()
  await waitFor(async () => (await sessions(app)) === 0, { what: 'sessions closed' })
  t.pass()
})

test('Python defect: query_timeout and session_tmp_buffer apply per endpoint, not process-wide', async (t) => {
  const pool = new Pool({
    type: 'non-threaded',
    db: [
      { ...endpoint(), id: 'fast', query_timeout: 1234, session_tmp_buffer: 16 },
      { ...endpoint(), id: 'slow', query_timeout: 4321, session_tmp_buffer: 32 },
    ],
    groups: groupsFor({ fast: { connection_count: 1, endpoints: ['fast'] }, slow: { connection_count: 1, endpoints: ['slow'] } }),
  })
  t.is(process.env.PGOPTIONS, undefined)
  if (viaBouncer) {
    // They travel as startup `options`, which PgBouncer is told to ignore: its shared server sessions keep the server's values.
    const direct = (await server.sql("SELECT current_setting('statement_timeout') AS st, current_setting('temp_buffers') AS tb")).rows[0]
    t.is((await pool.query('SHOW statement_timeout', [], { group: 'fast' })).rows[0].statement_timeout, direct.st)
    t.is((await pool.query('SHOW temp_buffers', [], { group: 'slow' })).rows[0].temp_buffers, direct.tb)
    // The client-side check (no answer within query_timeout + 1 s) still holds: cancelled, connection dropped.
    await t.throwsAsync(pool.query('SELECT pg_sleep(3)', [], { group: 'fast' }), { instanceOf: DBConnectionError })
    await pool.close()
    return
  }
  t.is((await pool.query('SHOW statement_timeout', [], { group: 'fast' })).rows[0].statement_timeout, '1234ms')
  t.is((await pool.query('SHOW statement_timeout', [], { group: 'slow' })).rows[0].statement_timeout, '4321ms')
  t.is((await pool.query('SHOW temp_buffers', [], { group: 'fast' })).rows[0].temp_buffers, '16MB')
  t.is((await pool.query('SHOW temp_buffers', [], { group: 'slow' })).rows[0].temp_buffers, '32MB')
  const err = await t.throwsAsync(pool.query('SELECT pg_sleep(3)', [], { group: 'fast' }), { instanceOf: DBQueryError })
  t.is(err.sqlState, '57014')
  await pool.close()
})

test('URL configuration, port, and application_name', async (t) => {
  const pool = new Pool({
    type: 'non-threaded',
    db: `${viaBouncer ? targetUrl() : server.url}?application_name=from-url`,
    groups: groupsFor({ default: { connection_count: 1 } }),
  })
  const r = await pool.query("SELECT current_setting('application_name') AS app, inet_server_port() AS port")
  t.is(r.rows[0].app, 'from-url')
  t.is(r.rows[0].port, server.port)
  await pool.close()
})

test('Python defect: passwords do not leak into connection errors', async (t) => {
  const pool = new Pool({
    type: 'non-threaded',
    db: { ...endpoint(), pass: 'wrong-password-xyz' },
    groups: groupsFor({ default: { connection_count: 1, acquire_timeout: 2000 } }),
  })
  const err = await t.throwsAsync(pool.ready, { instanceOf: DBOfflineError })
  t.false(err.message.includes('wrong-password-xyz'))
  t.false(err.message.includes(PASSWORD))
  // PgBouncer words a failed SCRAM login its own way.
  t.regex(err.message, viaBouncer ? /SASL authentication failed/ : /password authentication failed/)
  t.false(inspect(err, { depth: 5 }).includes('wrong-password-xyz'))
  await pool.close()
})

test('sqlprepare runs PrepareQueries on each new connection; queryPrepared calls ExecuteQuery', async (t) => {
  await server.sql(`CREATE SCHEMA IF NOT EXISTS "SQLPrepare"`)
  await server.sql(`CREATE TABLE IF NOT EXISTS "SQLPrepare".calls (pid int, at timestamptz DEFAULT now())`)
  await server.sql(`CREATE OR REPLACE FUNCTION "SQLPrepare"."PrepareQueries"() RETURNS void LANGUAGE plpgsql AS $$
    BEGIN INSERT INTO "SQLPrepare".calls(pid) VALUES (pg_backend_pid()); END $$`)
  await server.sql(`CREATE OR REPLACE FUNCTION "SQLPrepare"."ExecuteQuery"(name text, a int) RETURNS json LANGUAGE sql AS $$
    SELECT json_build_object('query', name, 'result', a * 2, 'prepared', EXISTS (SELECT 1 FROM "SQLPrepare".calls WHERE pid = pg_backend_pid())) $$`)
  const { pool } = makePool({ prep: { connection_count: 1, sqlprepare: true } })
  const db = pool.handler('prep')
  const result = await db.queryPrepared(['Test_Query_1', 21])
  const expected = { query: 'Test_Query_1', result: 42, prepared: true }
  if (viaBouncer) {
    // PrepareQueries ran at connect, through PgBouncer on whichever server session served it: maybe not this one.
    t.true((await server.sql('SELECT count(*)::int AS n FROM "SQLPrepare".calls')).rows[0].n >= 1)
    expected.prepared = result.prepared
  }
  t.deepEqual(result, expected)
  await db.release()
  await pool.close()
})

test('parameters are bound, never interpolated', async (t) => {
  const { pool } = makePool()
  const evil = "x'); DROP TABLE items; --"
  const r = await pool.query('SELECT $1::text AS v', [evil])
  t.is(r.rows[0].v, evil)
  t.is((await server.sql("SELECT to_regclass('items') IS NOT NULL AS ok")).rows[0].ok, true)
  await t.throwsAsync(pool.query('SELECT $1::int', [Symbol('x')]), { instanceOf: TypeError })
  await t.throwsAsync(pool.query('SELECT $1::int, $2::int', [1]), { instanceOf: DBQueryError })
  // Still fine afterwards.
  t.deepEqual((await pool.query('SELECT 2 AS two')).rows, [{ two: 2 }])
  await pool.close()
})

test('commands, rowCount, multi-statement scripts', async (t) => {
  const { pool } = makePool()
  const id = 5000 + seq
  const ins = await pool.query('INSERT INTO items VALUES ($1, $2), ($3, $4)', [id, 'a', id + 1, 'b'])
  t.is(ins.command, 'INSERT')
  t.is(ins.rowCount, 2)
  const upd = await pool.query('WITH x AS (SELECT 1) UPDATE items SET name = $2 WHERE id >= $1 AND id < $1 + 2', [id, 'c'])
  t.is(upd.command, 'UPDATE')
  t.is(upd.rowCount, 2)
  const del = await pool.query('DELETE FROM items WHERE id >= $1 AND id < $1 + 2', [id])
  t.is(del.rowCount, 2)
  const script = await pool.query(`CREATE TEMP TABLE s1 (a int); INSERT INTO s1 VALUES (1); DROP TABLE s1`)
  t.is(script.command, 'CREATE')
  t.is(script.rowCount, null)
  await pool.close()
})

test('close waits for checked-out handlers, then rejects new work; past the timeout it cancels', async (t) => {
  const { pool, app } = makePool({ default: { connection_count: 2 } })
  const db = pool.handler()
  await db.query('SELECT 1')
  let closed = false
  const closing = pool.close({ timeout: 10000 }).then(() => (closed = true))
  await t.throwsAsync(pool.query('SELECT 1'), { instanceOf: PoolClosedError })
  t.false(closed)
  await db.query('SELECT 2')
  await db.release()
  await closing
  t.true(closed)
  await waitFor(async () => (await sessions(app)) === 0, { what: 'sessions closed' })

  const { pool: p2 } = makePool({ default: { connection_count: 1 } })
  const stuck = p2.handler()
  const sleeping = stuck.query('SELECT pg_sleep(20)')
  sleeping.catch(() => {}) // handled below, after close
  await waitFor(() => p2.stats().groups.default.inUse === 1)
  await p2.close({ timeout: 200 })
  const err = await t.throwsAsync(sleeping)
  t.truthy(err.code)
  await t.throwsAsync(stuck.query('SELECT 1'), { instanceOf: PoolClosedError })
  await stuck.release()
})

test('target_session_attrs: a read-only group finds no standby, a read-write group works', async (t) => {
  const pool = new Pool({
    type: 'non-threaded',
    db: endpoint(),
    groups: groupsFor({
      write: { connection_count: 1, target_session_attrs: 'read-write' },
      read: { connection_count: 1, target_session_attrs: 'standby', acquire_timeout: 2000 },
    }),
  })
  const err = await t.throwsAsync(pool.ready, { instanceOf: DBOfflineError })
  t.regex(err.message, /group 'read'/)
  t.deepEqual((await pool.query('SELECT 1 AS x', [], { group: 'write' })).rows, [{ x: 1 }])
  await t.throwsAsync(pool.query('SELECT 1', [], { group: 'read' }), { instanceOf: DBOfflineError })
  await pool.close()
})

test('a one-shot pool query stands alone even on an autocommit:false group', async (t) => {
  const { pool } = makePool({ tx: { connection_count: 1, autocommit: false } })
  const id = 6000 + seq
  const r = await pool.query('INSERT INTO items VALUES ($1, $2)', [id, 'solo'], { group: 'tx' })
  t.is(r.rowCount, 1)
  t.is((await server.sql('SELECT count(*)::int AS n FROM items WHERE id = $1', [id])).rows[0].n, 1)
  await pool.close()
})
