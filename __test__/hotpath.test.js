'use strict'
// The hot-path machinery of issue 3, checked for correctness (speed is the benchmark's job):
// pipelined one-shot queries, checkouts handed over in JS, batched submissions, cursors.
const test = require('ava')

const { Pool, AbortError, PoolTimeoutError, DBQueryError } = require('..')
const { startServer, waitFor, guardProcess } = require('./helpers/pg')

guardProcess(test)

let server
let seq = 0

test.before(async () => {
  server = await startServer()
})

test.after.always(async () => {
  if (server) await server.destroy()
})

function makePool(groups, extra = {}) {
  const app = `pgdbpool-hot${process.pid}-${++seq}`
  const pool = new Pool({ type: 'non-threaded', db: { ...server.endpoint, application_name: app }, groups, ...extra })
  return { pool, app }
}

test('one-shot queries pipeline on the connections they have: every result is its own, the server sees no more sessions than configured', async (t) => {
  const { pool, app } = makePool({ default: { connection_count: 2, pipeline: 16 } })
  await pool.ready
  const n = 400
  const results = await Promise.all(Array.from({ length: n }, (_, i) => pool.query('SELECT $1::int AS i, pg_backend_pid() AS pid', [i])))
  results.forEach((r, i) => t.is(r.rows[0].i, i))
  const pids = new Set(results.map((r) => r.rows[0].pid))
  t.true(pids.size <= 2, `used ${pids.size} backends`)
  t.true((await server.sessions(app)) <= 2)
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

test("past every connection's pipeline depth, one-shot statements wait for a freed slot: all are answered, each its own, on the configured sessions", async (t) => {
  const { pool, app } = makePool({ default: { connection_count: 1, pipeline: 4 } })
  await pool.query('SELECT 1')
  const n = 300
  const results = await Promise.all(Array.from({ length: n }, (_, i) => pool.query('SELECT $1::int AS i', [i])))
  results.forEach((r, i) => t.is(r.rows[0].i, i))
  t.true((await server.sessions(app)) <= 1)
  const g = pool.stats().groups.default
  t.true(g.waits >= n - 4, `${g.waits} statements counted as waiting`)
  t.is(g.waiting, 0)
  t.is(g.inUse, 0)
  await pool.close()
})

test('a one-shot statement waiting for a pipeline slot keeps acquire_timeout and max_waiting', async (t) => {
  const { pool } = makePool({ default: { connection_count: 1, pipeline: 1, acquire_timeout: 300, max_waiting: 2 } })
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
  const { pool } = makePool({ default: { connection_count: 2, pipeline: 8, acquire_timeout: 10000 } })
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
  const { pool } = makePool({ default: { connection_count: 1, pipeline: 8 } })
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

test('waiting checkouts are served in FIFO order by connections handed over in JS; an AbortSignal ends a wait', async (t) => {
  const { pool } = makePool({ default: { connection_count: 1, acquire_timeout: 20000 } })
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

test('a handler with an open transaction is rolled back before its connection is handed to a waiter', async (t) => {
  const { pool } = makePool({ default: { connection_count: 1, autocommit: false, acquire_timeout: 20000 } })
  await server.sql('CREATE TABLE IF NOT EXISTS hot_handover (v int)')
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

test('statements queued without awaiting run in order, and a release right after them waits for them', async (t) => {
  const { pool } = makePool({ default: { connection_count: 1 } })
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

test('max_waiting and acquire_timeout hold for checkouts waiting in JS', async (t) => {
  const { pool } = makePool({ default: { connection_count: 1, max_waiting: 2, acquire_timeout: 200 } })
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

test('a cursor streams 1 000 000 rows in bounded batches and leaves no transaction behind', async (t) => {
  const { pool } = makePool({ default: { connection_count: 1 } })
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
  const { pool } = makePool({ default: { connection_count: 1 }, tx: { connection_count: 1, autocommit: false } })
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

test('an aborted handler query rejects at once and is cancelled on the server; the handler stays usable', async (t) => {
  const { pool } = makePool({ default: { connection_count: 1 } })
  const db = pool.handler()
  await db.acquire()
  const controller = new AbortController()
  const started = Date.now()
  const slow = db.query('SELECT pg_sleep(30)', [], { signal: controller.signal })
  await waitFor(
    () => server.sql("SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'").then((r) => r.rows[0].n === 1),
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

test('events: acquire and release are emitted; a handler held past leak_threshold is reported with the stack where it was taken', async (t) => {
  const { pool } = makePool({ default: { connection_count: 1, leak_threshold: 50 } })
  const seen = []
  pool.on('acquire', (e) => seen.push(['acquire', e.group]))
  pool.on('release', (e) => seen.push(['release', e.group]))
  const leaks = []
  pool.on('leak', (e) => leaks.push(e))
  const db = pool.handler()
  await db.acquire()
  await waitFor(() => leaks.length === 1, { what: 'leak report' })
  t.is(leaks[0].group, 'default')
  t.true(leaks[0].heldMs >= 50)
  t.regex(leaks[0].stack, /hotpath\.test\.js/)
  await db.release()
  t.deepEqual(seen, [
    ['acquire', 'default'],
    ['release', 'default'],
  ])
  // A listener that throws does not break the pool.
  pool.on('acquire', () => {
    throw new Error('listener bug')
  })
  const again = pool.handler()
  await again.query('SELECT 1')
  await again.release()
  t.is(pool.stats().groups.default.inUse, 0)
  await pool.close()
})

test('core lifecycle events reach listeners: connect, ban of an unreachable endpoint, disconnect at close', async (t) => {
  const { freePort } = require('./helpers/pg')
  const deadPort = await freePort()
  const pool = new Pool({
    type: 'non-threaded',
    db: [
      { ...server.endpoint, id: 'live', application_name: `pgdbpool-ev${process.pid}` },
      { ...server.endpoint, id: 'dead', port: deadPort, connect_timeout: 2 },
    ],
    groups: { default: { connection_count: 2 } },
  })
  const events = []
  for (const type of ['connect', 'ban', 'disconnect']) pool.on(type, (e) => events.push(e))
  await pool.ready
  await waitFor(() => events.some((e) => e.type === 'connect' && e.endpoint === 'live'), { what: 'connect event' })
  await waitFor(() => events.some((e) => e.type === 'ban' && e.endpoint === 'dead'), { what: 'ban event' })
  const ban = events.find((e) => e.type === 'ban')
  t.is(typeof ban.at, 'number')
  t.truthy(ban.reason)
  t.false(JSON.stringify(events).includes(server.endpoint.pass), 'no password in events')
  await pool.close()
  await waitFor(() => events.some((e) => e.type === 'disconnect'), { what: 'disconnect event' })
})
