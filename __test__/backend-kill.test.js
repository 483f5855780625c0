'use strict'
// Backends killed under the pool: only the statement on that connection fails, the slot is
// reused, and no two handlers ever share a connection.
// PGDBPOOL_TEST_VIA=pgbouncer (pgbouncer.test.js): the same tests through PgBouncer.
const test = require('ava')

const { DBQueryError, DBConnectionError } = require('..')
const { guardProcess, waitFor } = require('./helpers/pg')
const { useTarget } = require('./helpers/target')

guardProcess(test)

const target = useTarget(test)

test('a backend killed mid-query fails that query only, and the slot is reused', async (t) => {
  const { pool, app } = target.makePool({ default: { connection_count: 1, acquire_timeout: 5000 } })
  const db = pool.handler()
  let pid = (await db.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
  const slow = db.query('SELECT pg_sleep(30)')
  slow.catch(() => {}) // handled below, after the kill
  if (target.viaBouncer) {
    // Through PgBouncer the next autocommit statement may run on another server session: kill the one sleeping.
    pid = await waitFor(
      async () =>
        (await target.server.sql("SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' AND query LIKE '%pg_sleep(30)%'", [app]))
          .rows[0]?.pid,
    )
  }
  await waitFor(
    async () => (await target.server.sql("SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_sleep%'", [pid])).rows[0].n === 1,
  )
  await target.server.sql('SELECT pg_terminate_backend($1)', [pid])
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

test('killed backends never make two handlers share a connection', async (t) => {
  // Through PgBouncer a backend pid names a handler's connection only inside a transaction, so
  // each handler runs in one (autocommit: false); and the test gets a database, hence a
  // PgBouncer server pool, of its own, so the backends it kills serve no other test.
  const group = { connection_count: 4, acquire_timeout: 20000, ping_after_idle: 0, ...(target.viaBouncer && { autocommit: false }) }
  const { pool, app } = target.makePool({ default: group }, target.viaBouncer ? { name: 'pgdbpool_kill' } : {})
  const inUse = new Set()
  let shared = 0
  let completed = 0
  let failed = 0
  let stop = false
  const killer = (async () => {
    while (!stop) {
      await target.server
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
  if (target.viaBouncer) await waitFor(() => pool.stats().groups.default.inUse === 0, { what: 'inUse = 0' })
  const s = pool.stats().groups.default
  t.is(s.inUse, 0)
  t.true(s.size <= 4)
  await waitFor(async () => (await target.sessions(app)) <= 4, { what: 'sessions <= 4' })
  await pool.close()
  await waitFor(async () => (await target.sessions(app)) === 0, { what: 'sessions closed' })
  t.pass()
})
