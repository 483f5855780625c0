'use strict'
// A timeout or an abort touches only its own statement (README "No crash path"): a pipelined
// statement's client-side clock starts when the statements before it on its connection are
// done, a cancel request goes out only while the statement it is meant for runs, a statement
// aborted while still queued never reaches the server, and an abort after release() does
// nothing.
const test = require('ava')

const { AbortError } = require('..')
const { waitFor, guardProcess } = require('./helpers/pg')
const { useTarget } = require('./helpers/target')

guardProcess(test)

const target = useTarget(test)
let tables = 0

async function table() {
  const name = `abort_rows_${process.pid}_${++tables}`
  await target.server.sql(`CREATE TABLE ${name} (v int)`)
  return name
}

test('query_timeout counts from when a pipelined statement reaches the head of its connection, not from when it was queued', async (t) => {
  // Eight statements of 0.9 s each share the one connection: the last one waits 6.3 s for the
  // others, yet each runs for less than query_timeout on the server.
  const { pool } = target.makePool({ default: { connection_count: 1, pipeline: 8, acquire_timeout: 20000 } }, { query_timeout: 1000 })
  await pool.ready
  const results = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => pool.query('SELECT pg_sleep(0.9), $1::int AS i', [i])))
  const failures = results.filter((r) => r.status === 'rejected').map((r) => `${r.reason.name}: ${r.reason.message}`)
  t.deepEqual(failures, [])
  results.forEach((r, i) => r.status === 'fulfilled' && t.is(r.value.rows[0].i, i))
  // They did share the connection (otherwise this would prove nothing).
  t.is(pool.stats().groups.default.connects, 1)
  await pool.close()
})

test('an abort of a statement still queued behind another on its handler removes it: the running one is not cancelled, the aborted one never runs', async (t) => {
  const rows = await table()
  const { pool } = target.makePool({ default: { connection_count: 1 } })
  const db = pool.handler()
  await db.acquire()
  const controller = new AbortController()
  const sleep = db.query('SELECT pg_sleep(0.5) AS slept')
  const insert = db.query(`INSERT INTO ${rows} VALUES (1)`, [], { signal: controller.signal })
  setTimeout(() => controller.abort(), 100)
  await t.throwsAsync(insert, { instanceOf: AbortError })
  const slept = await sleep.then(
    (r) => r.rows.length,
    (e) => `${e.name} ${e.sqlState}: ${e.message}`,
  )
  t.is(slept, 1, 'the running statement was not cancelled')
  // The next statement on the handler runs after where the INSERT would have run.
  t.deepEqual((await db.query(`SELECT count(*)::int AS n FROM ${rows}`)).rows, [{ n: 0 }])
  await db.release()
  t.deepEqual((await target.server.sql(`SELECT count(*)::int AS n FROM ${rows}`)).rows, [{ n: 0 }])
  await pool.close()
})

test('an abort of the running statement on a handler still cancels it on the server', async (t) => {
  const { pool } = target.makePool({ default: { connection_count: 1 } })
  const db = pool.handler()
  await db.acquire()
  const controller = new AbortController()
  const started = Date.now()
  const slow = db.query('SELECT pg_sleep(30)', [], { signal: controller.signal })
  await waitFor(
    async () =>
      (await target.server.sql("SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'")).rows[0].n === 1,
    { what: 'sleep running' },
  )
  controller.abort()
  await t.throwsAsync(slow, { instanceOf: AbortError })
  t.deepEqual((await db.query('SELECT 1 AS v')).rows, [{ v: 1 }])
  t.true(Date.now() - started < 20000)
  await db.release()
  await pool.close()
})

test('an abort after release() is a no-op: the statement keeps its own result and the next user of the connection is untouched', async (t) => {
  const { pool } = target.makePool({ default: { connection_count: 1 } })
  const db = pool.handler()
  await db.acquire()
  const controller = new AbortController()
  const first = db.query('SELECT pg_sleep(0.3), 1 AS v', [], { signal: controller.signal })
  await db.release()
  // The next user queues for the same connection; its statement must not be cancelled either.
  const next = pool.handler()
  const second = next.query('SELECT pg_sleep(0.2), 2 AS v')
  controller.abort()
  t.is((await first).rows[0].v, 1)
  t.is((await second).rows[0].v, 2)
  await next.release()
  await pool.close()
})

test('a one-shot statement aborted while it waits for a connection never reaches the server', async (t) => {
  const rows = await table()
  const { pool } = target.makePool({ default: { connection_count: 1, acquire_timeout: 10000 } })
  const holder = pool.handler()
  await holder.acquire()
  const controller = new AbortController()
  const insert = pool.query(`INSERT INTO ${rows} VALUES (1)`, [], { signal: controller.signal })
  // Let it reach the core's queue before the abort.
  await waitFor(() => pool.stats().groups.default.waiting >= 1, { what: 'the insert waiting for a connection' })
  controller.abort()
  await t.throwsAsync(insert, { instanceOf: AbortError })
  await holder.release()
  // Queued behind where the INSERT was: it sees what the INSERT would have done.
  t.deepEqual((await pool.query(`SELECT count(*)::int AS n FROM ${rows}`)).rows, [{ n: 0 }])
  t.deepEqual((await target.server.sql(`SELECT count(*)::int AS n FROM ${rows}`)).rows, [{ n: 0 }])
  await pool.close()
})

test('a one-shot statement aborted in the tick it was made never reaches the server', async (t) => {
  const rows = await table()
  const { pool } = target.makePool({ default: { connection_count: 1 } })
  await pool.ready
  const controller = new AbortController()
  const insert = pool.query(`INSERT INTO ${rows} VALUES (1)`, [], { signal: controller.signal })
  controller.abort()
  await t.throwsAsync(insert, { instanceOf: AbortError })
  t.deepEqual((await pool.query(`SELECT count(*)::int AS n FROM ${rows}`)).rows, [{ n: 0 }])
  await pool.close()
})

// Serial: it finds its statement by text in pg_stat_activity, and the other tests run the same one.
test.serial('an aborted handler query rejects at once and is cancelled on the server; the handler stays usable', async (t) => {
  const { pool } = target.makePool({ default: { connection_count: 1 } })
  const db = pool.handler()
  await db.acquire()
  const controller = new AbortController()
  const started = Date.now()
  const slow = db.query('SELECT pg_sleep(30)', [], { signal: controller.signal })
  await waitFor(
    () =>
      target.server
        .sql("SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'")
        .then((r) => r.rows[0].n === 1),
    { what: 'sleep running' },
  )
  controller.abort()
  await t.throwsAsync(slow, { instanceOf: AbortError })
  // The server stopped the statement: the next one runs right after, not 30 s later.
  t.deepEqual((await db.query('SELECT 1 AS v')).rows, [{ v: 1 }])
  t.true(Date.now() - started < 20000)
  await db.release()
  // A one-shot query with an aborted signal never runs.
  await t.throwsAsync(pool.query('SELECT 1', [], { signal: AbortSignal.abort() }), { instanceOf: AbortError })
  await pool.close()
})
