'use strict'
// Server-side cursors on a handler: large results in bounded batches, and a clean close when
// left early or failing midway.
const test = require('ava')

const { DBQueryError } = require('..')
const { guardProcess } = require('./helpers/pg')
const { useTarget } = require('./helpers/target')

guardProcess(test)

const target = useTarget(test)

test('a cursor streams 1 000 000 rows in bounded batches and leaves no transaction behind', async (t) => {
  const { pool } = target.makePool({ default: { connection_count: 1 } })
  await pool.withHandler('default', async (db) => {
    let count = 0
    let sum = 0
    let last
    const cursor = db.cursor('SELECT g AS n, md5(g::text) AS h FROM generate_series(1, $1::int) g', [1000000], { batchSize: 5000 })
    for await (const row of cursor) {
      count++
      sum += row.n
      last = row
    }
    t.is(count, 1000000)
    t.is(sum, (1000000 * 1000001) / 2)
    t.is(last.n, 1000000)
    t.is(typeof last.h, 'string')
    t.deepEqual(
      cursor.fields.map((f) => f.name),
      ['n', 'h'],
    )
    t.false(db.inTransaction)
    // Batches are what read() says they are.
    const small = db.cursor('SELECT g FROM generate_series(1, 25) g', [], { batchSize: 10, rowMode: 'array' })
    t.deepEqual((await small.read()).length, 10)
    t.deepEqual((await small.read()).length, 10)
    t.deepEqual(await small.read(), [[21], [22], [23], [24], [25]])
    t.deepEqual(await small.read(), [])
    t.false(db.inTransaction)
  })
  await pool.close()
})

test('a cursor left early or failing midway closes cleanly; the handler stays usable', async (t) => {
  const { pool } = target.makePool({ default: { connection_count: 1 }, tx: { connection_count: 1, autocommit: false } })
  await pool.withHandler('default', async (db) => {
    for await (const row of db.cursor('SELECT g FROM generate_series(1, 100000) g', [], { batchSize: 100 })) {
      if (row.g === 150) break
    }
    t.false(db.inTransaction)
    const failing = db.cursor('SELECT 1 / (g - 250) AS x FROM generate_series(1, 1000) g', [], { batchSize: 100 })
    const err = await t.throwsAsync(async () => {
      for await (const _ of failing) {
        // consume
      }
    })
    t.true(err instanceof DBQueryError)
    t.is(err.sqlState, '22012')
    t.false(db.inTransaction)
    t.deepEqual((await db.query('SELECT 7 AS v')).rows, [{ v: 7 }])
  })
  // On an autocommit:false group the cursor lives in the handler's own transaction.
  await pool.withHandler('tx', async (db) => {
    const rows = []
    for await (const row of db.cursor('SELECT g FROM generate_series(1, 5) g', [], { batchSize: 2 })) rows.push(row.g)
    t.deepEqual(rows, [1, 2, 3, 4, 5])
    t.true(db.inTransaction)
  })
  await pool.close()
})
