'use strict'
// A quiet pool: while only a few statements are in flight the core's worker polls for their
// answers instead of sleeping (the low-latency path). It must stop as soon as the pool has
// nothing to do, and it must not change what any statement returns.
const test = require('ava')

const { Pool, DBQueryError } = require('..')
const { startServer, guardProcess } = require('./helpers/pg')

guardProcess(test)

let server

test.before(async () => {
  server = await startServer()
})

test.after.always(async () => {
  if (server) await server.destroy()
})

/** CPU of this process (every thread) over `ms`, as a percentage of one core. */
async function cpuOver(ms) {
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  await new Promise((r) => setTimeout(r, ms))
  const cpu = process.cpuUsage(cpu0)
  return ((cpu.user + cpu.system) / 1000 / (performance.now() - t0)) * 100
}

test.serial('sequential statements get their own answers on the low-latency path, and the pool uses no CPU once they stop', async (t) => {
  const pool = new Pool({ type: 'non-threaded', db: server.endpoint, groups: { default: { connection_count: 2 } } })
  t.teardown(() => pool.close({ timeout: 0 }))
  await pool.ready
  // One statement at a time, a failing one among them, with and without a transaction.
  for (let i = 0; i < 2000; i++) {
    if (i % 500 === 250) {
      await t.throwsAsync(pool.query('SELECT 1/0'), { instanceOf: DBQueryError })
      continue
    }
    const r = await pool.query('SELECT $1::int AS i', [i])
    t.is(r.rows[0].i, i)
  }
  const committed = await pool.withHandler('default', async (db) => (await db.query('SELECT 41 + 1 AS n')).rows[0].n)
  t.is(committed, 42)
  // A spinning worker burns a whole core; an idle pool sleeps (its health pings are rare).
  const idle = await cpuOver(1000)
  t.true(idle < 10, `CPU with nothing to do: ${idle.toFixed(1)} % of one core`)
})

test.serial('a long statement is waited for asleep, not spun on', async (t) => {
  const pool = new Pool({ type: 'non-threaded', db: server.endpoint, groups: { default: { connection_count: 1 } } })
  t.teardown(() => pool.close({ timeout: 0 }))
  await pool.ready
  await pool.query('SELECT 1')
  const running = pool.query('SELECT pg_sleep(1.5)')
  // The first milliseconds may spin; the second and a bit that follow must not.
  await new Promise((r) => setTimeout(r, 200))
  const during = await cpuOver(1000)
  await running
  t.true(during < 10, `CPU while one long statement runs: ${during.toFixed(1)} % of one core`)
})
