'use strict'
// A result of a million rows crosses as one Buffer and decodes into rows, through a one-shot
// query and through a Handler (no single JS string for the whole result, no per-cell calls).

const test = require('ava')

const { Pool } = require('..')
const { startServer, guardProcess } = require('./helpers/pg')

guardProcess(test)

let server
let pool

test.before(async () => {
  server = await startServer()
  // A generous statement_timeout: on a loaded machine producing the rows can take seconds.
  pool = new Pool({
    type: 'non-threaded',
    db: { ...server.endpoint, application_name: 'large-test', query_timeout: 100000 },
    groups: { default: { connection_count: 2 } },
  })
  await pool.ready
})

test.after.always(async () => {
  if (pool) await pool.close().catch(() => {})
  if (server) await server.destroy()
})

const N = 1_000_000
const SQL = `SELECT g, 'x' || g AS s FROM generate_series(1, ${N}) g`

function check(t, r) {
  t.is(r.command, 'SELECT')
  t.is(r.rowCount, N)
  t.is(r.rows.length, N)
  t.deepEqual(
    r.fields.map((f) => [f.name, f.dataTypeID]),
    [
      ['g', 23],
      ['s', 25],
    ],
  )
  for (const i of [0, 1, 4_999, 500_000, 777_777, N - 1]) t.deepEqual(r.rows[i], { g: i + 1, s: `x${i + 1}` })
}

// Serial: two million-row results at once would only compete for the machine's two cores.
test.serial('a 1 000 000-row result through a one-shot query', async (t) => {
  const started = Date.now()
  check(t, await pool.query(SQL))
  t.log(`one-shot: ${Date.now() - started} ms`)
})

test.serial('a 1 000 000-row result through a Handler, then the connection is reused', async (t) => {
  const db = pool.handler()
  try {
    const started = Date.now()
    check(t, await db.query(SQL))
    t.log(`Handler: ${Date.now() - started} ms`)
    const arrays = await db.query(SQL, [], { rowMode: 'array' })
    t.is(arrays.rowCount, N)
    t.deepEqual(arrays.rows[N - 1], [N, `x${N}`])
    t.deepEqual((await db.query('SELECT 1 AS one')).rows, [{ one: 1 }])
  } finally {
    await db.release()
  }
  t.is(pool.stats().groups.default.inUse, 0)
})
