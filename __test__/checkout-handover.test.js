'use strict'
// Checkouts waiting in JS, served by connections handed over from releasing handlers: FIFO
// order, AbortSignal, max_waiting and acquire_timeout; a connection is handed over only once the
// statements before the release have run and an open transaction is rolled back.
const test = require('ava')

const { AbortError, PoolTimeoutError } = require('..')
const { guardProcess, waitFor } = require('./helpers/pg')
const { useTarget } = require('./helpers/target')

guardProcess(test)

const target = useTarget(test)

test('waiting checkouts are served in FIFO order by connections handed over in JS; an AbortSignal ends a wait', async (t) => {
  const { pool } = target.makePool({ default: { connection_count: 1, acquire_timeout: 20000 } })
  const holder = pool.handler()
  await holder.acquire()
  const order = []
  const waiting = [1, 2, 3].map((n) => {
    const db = pool.handler()
    return db.acquire().then(async () => {
      order.push(n)
      const r = await db.query('SELECT $1::int AS n', [n])
      t.is(r.rows[0].n, n)
      await db.release()
    })
  })
  const controller = new AbortController()
  const aborted = pool.handler().acquire({ signal: controller.signal })
  t.is(pool.stats().groups.default.waiting, 4)
  controller.abort()
  await t.throwsAsync(aborted, { instanceOf: AbortError })
  t.is(pool.stats().groups.default.waiting, 3)
  await holder.release()
  await Promise.all(waiting)
  t.deepEqual(order, [1, 2, 3])
  // An already-aborted signal fails at once.
  await t.throwsAsync(pool.handler().acquire({ signal: AbortSignal.abort() }), { instanceOf: AbortError })
  // Acquire requests the core no longer needs to serve come back to the pool.
  await waitFor(() => pool.stats().groups.default.inUse === 0, { what: 'every connection back' })
  t.is(pool.stats().groups.default.waiting, 0)
  await pool.close()
})

test('statements queued without awaiting run in order, and a release right after them waits for them', async (t) => {
  const { pool } = target.makePool({ default: { connection_count: 1 } })
  const db = pool.handler()
  await db.query('CREATE TEMP TABLE hot_order (i int)')
  const inserts = Array.from({ length: 50 }, (_, i) => db.query('INSERT INTO hot_order VALUES ($1)', [i]))
  const read = db.query('SELECT array_agg(i ORDER BY ctid)::int[] AS seq FROM hot_order')
  db.release()
  await Promise.all(inserts)
  t.deepEqual(
    (await read).rows[0].seq,
    Array.from({ length: 50 }, (_, i) => i),
  )
  await waitFor(() => pool.stats().groups.default.inUse === 0, { what: 'connection returned' })
  await pool.close()
})

test('a handler with an open transaction is rolled back before its connection is handed to a waiter', async (t) => {
  const { pool } = target.makePool({ default: { connection_count: 1, autocommit: false, acquire_timeout: 20000 } })
  await target.server.sql('CREATE TABLE IF NOT EXISTS hot_handover (v int)')
  const first = pool.handler()
  await first.query('INSERT INTO hot_handover VALUES (1)')
  t.true(first.inTransaction)
  const second = pool.handler()
  const got = second.acquire()
  await first.release()
  await got
  t.false(second.inTransaction)
  const r = await second.query('SELECT count(*)::int AS n FROM hot_handover')
  t.is(r.rows[0].n, 0)
  await second.release()
  await pool.close()
})

test('max_waiting and acquire_timeout hold for checkouts waiting in JS', async (t) => {
  const { pool } = target.makePool({ default: { connection_count: 1, max_waiting: 2, acquire_timeout: 200 } })
  const holder = pool.handler()
  await holder.acquire()
  const a = pool.handler().acquire()
  const b = pool.handler().acquire()
  await t.throwsAsync(pool.handler().acquire(), { instanceOf: PoolTimeoutError, message: /max_waiting/ })
  await t.throwsAsync(a, { instanceOf: PoolTimeoutError, message: /acquire_timeout \(200 ms\)/ })
  await t.throwsAsync(b, { instanceOf: PoolTimeoutError })
  // The core's own acquire requests time out too; their replies may still be on the way, and
  // the count settles once they are in.
  await waitFor(() => pool.stats().groups.default.timeouts === 3, { what: 'timeouts = 3' })
  await holder.release()
  await pool.close()
})
