'use strict'
// Closing a pool: it waits for checked-out handlers, rejects new work, and past its timeout
// cancels what is left.
// PGDBPOOL_TEST_VIA=pgbouncer (pgbouncer.test.js): the same tests through PgBouncer.
const test = require('ava')

const { PoolClosedError } = require('..')
const { guardProcess, waitFor } = require('./helpers/pg')
const { useTarget } = require('./helpers/target')

guardProcess(test)

const target = useTarget(test)

test('close waits for checked-out handlers, then rejects new work; past the timeout it cancels', async (t) => {
  const { pool, app } = target.makePool({ default: { connection_count: 2 } })
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
  await waitFor(async () => (await target.sessions(app)) === 0, { what: 'sessions closed' })

  const { pool: p2 } = target.makePool({ default: { connection_count: 1 } })
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
