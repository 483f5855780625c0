'use strict'
// With PGDBPOOL_TEST_HOOKS=1 the core panics on purpose where a statement's text asks for it
// (`pgdbpool:panic` inside a task, `pgdbpool:panic-sync` inside the synchronous submit call), so
// that __test__/panic.test.js can check that no panic crosses N-API: each becomes an error of the
// operations it hit, and the pool goes on. Prints one JSON line per step.
const path = require('node:path')
const lib = require(path.join(__dirname, '..', '..'))

const endpoint = JSON.parse(process.argv[2])
const out = (step, value) => console.log(JSON.stringify({ step, ...value }))
const outcome = (p) =>
  p.then(
    (r) => ({ ok: true, rows: r && r.rows }),
    (e) => ({ ok: false, name: e && e.name, code: e && e.code, message: String(e && e.message) }),
  )

;(async () => {
  const pool = new lib.Pool({
    type: 'non-threaded',
    db: endpoint,
    groups: { default: { connection_count: 2 }, tx: { connection_count: 1, autocommit: false } },
  })
  await pool.ready
  out('one-shot panic', await outcome(pool.query('SELECT 1 AS v /* pgdbpool:panic */')))
  out('one-shot after', await outcome(pool.query('SELECT 2 AS v')))
  // Several in one batch: the panic fails its own statement only.
  const batch = await Promise.all([pool.query('SELECT 3 AS v'), pool.query('SELECT 4 AS v /* pgdbpool:panic */'), pool.query('SELECT 5 AS v')].map(outcome))
  out('batch', { results: batch })
  const db = pool.handler('tx')
  out('handler first', await outcome(db.query('SELECT 6 AS v')))
  out('handler panic', await outcome(db.query('SELECT 7 AS v /* pgdbpool:panic */')))
  out('handler after', await outcome(db.query('SELECT 8 AS v')))
  await db.release()
  out('sync panic', await outcome(pool.query('SELECT 9 AS v /* pgdbpool:panic-sync */')))
  out('sync after', await outcome(pool.query('SELECT 10 AS v')))
  const withHandler = await outcome(pool.withHandler('tx', (h) => h.query('SELECT 11 AS v')))
  out('handler again', withHandler)
  const stats = pool.stats().groups
  out('stats', { inUse: stats.default.inUse + stats.tx.inUse })
  await pool.close()
  out('closed', {})
})().catch((e) => {
  console.error('panic child failed', e && e.stack)
  process.exitCode = 3
})
