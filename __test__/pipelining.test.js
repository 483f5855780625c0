'use strict'
// One-shot statements pipelined on the connections the pool has: every result is its own, past
// the pipeline depth they wait for a slot within acquire_timeout and max_waiting, handler
// checkouts are not starved, and statements that change session state never share a connection.
const test = require('ava')

const { PoolTimeoutError, DBQueryError } = require('..')
const { guardProcess, waitFor } = require('./helpers/pg')
const { useTarget } = require('./helpers/target')

guardProcess(test)

const target = useTarget(test)

test('one-shot queries pipeline on the connections they have: every result is its own, the server sees no more sessions than configured', async (t) => {
  const { pool, app } = target.makePool({ default: { connection_count: 2, pipeline: 16 } })
  await pool.ready
  const n = 400
  const results = await Promise.all(Array.from({ length: n }, (_, i) => pool.query('SELECT $1::int AS i, pg_backend_pid() AS pid', [i])))
  results.forEach((r, i) => t.is(r.rows[0].i, i))
  const pids = new Set(results.map((r) => r.rows[0].pid))
  t.true(pids.size <= 2, `used ${pids.size} backends`)
  t.true((await target.server.sessions(app)) <= 2)
  // A failing statement in the middle of a pipeline fails alone.
  const mixed = await Promise.allSettled(Array.from({ length: 30 }, (_, i) => pool.query(i === 15 ? 'SELECT 1/0' : 'SELECT $1::int AS i', i === 15 ? [] : [i])))
  mixed.forEach((r, i) => {
    if (i === 15) t.true(r.status === 'rejected' && r.reason instanceof DBQueryError && r.reason.sqlState === '22012')
    else t.is(r.value.rows[0].i, i)
  })
  const g = pool.stats().groups.default
  t.is(g.inUse, 0)
  t.true(g.size <= 2)
  await pool.close()
})

test('results that come back many to a batch, some larger than a batch, each arrive whole and as their own', async (t) => {
  // Batches of tens of KiB are settled a few KiB at a time while the next ones arrive, and a
  // result above 64 KiB does not fit the buffer most batches are taken into: every value must be
  // exactly what its statement selected.
  const { pool } = target.makePool({ default: { connection_count: 2, pipeline: 16 } })
  await pool.ready
  const sizeOf = (i) => (i % 50 === 7 ? 100_000 : 1_000 + (i % 13) * 97)
  const expected = (i) => String.fromCharCode(65 + (i % 26)).repeat(sizeOf(i)) + i
  for (let round = 0; round < 3; round++) {
    const results = await Promise.all(
      Array.from({ length: 300 }, (_, i) => pool.query('SELECT repeat(chr(65 + $1::int % 26), $2) || $1 AS v, $1::int AS i', [i, sizeOf(i)])),
    )
    results.forEach((r, i) => {
      if (r.rows[0].i !== i || r.rows[0].v !== expected(i)) t.fail(`statement ${i} got row ${r.rows[0].i} with ${r.rows[0].v.length} characters`)
    })
  }
  t.is(pool.stats().groups.default.inUse, 0)
  await pool.close()
})

test("past every connection's pipeline depth, one-shot statements wait for a freed slot: all are answered, each its own, on the configured sessions", async (t) => {
  const { pool, app } = target.makePool({ default: { connection_count: 1, pipeline: 4 } })
  await pool.query('SELECT 1')
  const n = 300
  const results = await Promise.all(Array.from({ length: n }, (_, i) => pool.query('SELECT $1::int AS i', [i])))
  results.forEach((r, i) => t.is(r.rows[0].i, i))
  t.true((await target.server.sessions(app)) <= 1)
  const g = pool.stats().groups.default
  t.true(g.waits >= n - 4, `${g.waits} statements counted as waiting`)
  t.is(g.waiting, 0)
  t.is(g.inUse, 0)
  await pool.close()
})

test('a one-shot statement waiting for a pipeline slot keeps acquire_timeout and max_waiting', async (t) => {
  const { pool } = target.makePool({ default: { connection_count: 1, pipeline: 1, acquire_timeout: 300, max_waiting: 2 } })
  await pool.query('SELECT 1')
  const slow = pool.query('SELECT pg_sleep(1.5) AS slept')
  const waiters = [pool.query('SELECT 1'), pool.query('SELECT 2')]
  await waitFor(() => pool.stats().groups.default.waiting === 2, { what: 'two statements waiting for the slot' })
  await t.throwsAsync(pool.query('SELECT 3'), { instanceOf: PoolTimeoutError, message: /max_waiting/ })
  for (const w of waiters) await t.throwsAsync(w, { instanceOf: PoolTimeoutError, message: /acquire_timeout/ })
  t.is((await slow).rowCount, 1)
  t.is(pool.stats().groups.default.waiting, 0)
  t.is((await pool.query('SELECT 4 AS v')).rows[0].v, 4)
  await pool.close()
})

test('a handler checkout is not starved by a stream of pipelined one-shot queries', async (t) => {
  const { pool } = target.makePool({ default: { connection_count: 2, pipeline: 8, acquire_timeout: 10000 } })
  await pool.ready
  let stop = false
  const load = Array.from({ length: 32 }, async () => {
    while (!stop) await pool.query('SELECT pg_sleep(0.001)')
  })
  await waitFor(() => pool.stats().groups.default.inUse === 2, { what: 'both connections busy' })
  const db = pool.handler()
  await db.acquire()
  const r = await db.query('SELECT 42 AS v')
  t.is(r.rows[0].v, 42)
  await db.release()
  stop = true
  await Promise.all(load)
  await pool.close()
})

test('statements that change session state never share a connection', async (t) => {
  const { pool } = target.makePool({ default: { connection_count: 1, pipeline: 8 } })
  await pool.ready
  // BEGIN as a one-shot must not leak a transaction into pipelined neighbours.
  const all = await Promise.all([
    pool.query('SELECT 1 AS a'),
    pool.query('BEGIN'),
    pool.query('SELECT 2 AS a'),
    pool.query("SELECT current_setting('transaction_isolation') AS iso"),
  ])
  t.is(all[0].rows[0].a, 1)
  t.is(all[2].rows[0].a, 2)
  const db = pool.handler()
  t.false(db.inTransaction)
  await db.query('SELECT 1')
  t.false(db.inTransaction, 'the pooled connection is not left inside a transaction')
  await db.release()
  // A script of several statements still runs (on a connection of its own).
  const script = await pool.query('SELECT 1; SELECT 2')
  t.is(script.command, 'SELECT')
  await pool.close()
})
