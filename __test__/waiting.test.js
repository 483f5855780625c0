'use strict'
// Checkouts that wait for a connection: FIFO order, acquire_timeout, max_waiting.
// PGDBPOOL_TEST_VIA=pgbouncer (pgbouncer.test.js): the same tests through PgBouncer.
const test = require('ava')

const { PoolTimeoutError } = require('..')
const { guardProcess, waitFor } = require('./helpers/pg')
const { useTarget } = require('./helpers/target')

guardProcess(test)

const target = useTarget(test)

test('waiting is FIFO and bounded by acquire_timeout', async (t) => {
  const { pool } = target.makePool({ default: { connection_count: 1, acquire_timeout: 30000 }, short: { connection_count: 1, acquire_timeout: 150 } })
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
  const { pool } = target.makePool({ default: { connection_count: 1, max_waiting: 1, acquire_timeout: 30000 } })
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
