'use strict'
// Retry after a connection fault, through the TCP fault proxy: a one-shot statement that was never
// sent is retried on another endpoint; one that may have run never is, and DBConnectionError says so.
const test = require('ava')

const { Pool, DBConnectionError } = require('..')
const { guardProcess, waitFor, external } = require('./helpers/pg')
const { useFaultServers, endpoint, holdMany } = require('./helpers/faults')

guardProcess(test)

const { servers, app, proxyTo } = useFaultServers(test, 'retry')

test.serial('a one-shot query whose connection died before it was sent is retried on another endpoint', async (t) => {
  if (external) return t.pass('needs embedded servers')
  const name = app()
  const proxy = await proxyTo(servers[0])
  const pool = new Pool({
    type: 'non-threaded',
    // No monitor round and no ping before hand-out: the dead sessions are only found by use.
    health_interval: 600000,
    db: [endpoint(servers[0], 'p0', name, {}, proxy), endpoint(servers[1], 's1', name)],
    groups: { default: { connection_count: 4, ping_after_idle: 600000 } },
  })
  await pool.ready
  await Promise.all((await holdMany(pool, 'default', 4)).map((h) => h.release()))
  // A release completes in the core a moment after release() returns.
  await waitFor(() => pool.stats().groups.default.endpoints.every((e) => e.idle === 2), { ms: 5000, what: 'two idle connections on each endpoint' })
  // The server ends the sessions behind the proxy; the proxy holds the news back for 2 s, so the
  // pool still takes them for alive when it sends the next statements.
  await proxy.delay(2000)
  await servers[0].sql('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [name])
  // As many statements as connections: each takes one, and nothing needs a new connection
  // through the slow proxy (which would only measure the proxy's delay).
  const results = await Promise.allSettled(Array.from({ length: 4 }, () => pool.query('SELECT inet_server_port() AS port')))
  await proxy.pass()
  t.deepEqual(
    results.filter((r) => r.status === 'rejected').map((r) => r.reason.message),
    [],
  )
  const s = pool.stats().groups.default
  t.true(s.retries >= 1, `retries ${s.retries}`)
  t.true(results.every((r) => r.value.rows[0].port === servers[1].port || r.value.rows[0].port === servers[0].port))
  await pool.close()
})

test.serial('a statement that may have run is never retried: DBConnectionError says so', async (t) => {
  if (external) return t.pass('needs embedded servers')
  const name = app()
  const tag = `once-${name}`
  const proxy = await proxyTo(servers[0])
  const pool = new Pool({
    type: 'non-threaded',
    db: [endpoint(servers[0], 'p0', name, {}, proxy), endpoint(servers[1], 's1', name)],
    groups: { default: { connection_count: 2, endpoints: ['p0'] } },
  })
  await pool.ready
  const insert = pool.query('INSERT INTO ha_once (tag) SELECT $1 FROM pg_sleep(0.3)', [tag])
  insert.catch(() => {})
  await waitFor(
    async () =>
      (
        await servers[0].sql(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' AND query LIKE 'INSERT INTO ha_once%'",
          [name],
        )
      ).rows[0].n === 1,
    { ms: 5000, every: 5, what: 'the INSERT running on the server' },
  )
  await proxy.reset()
  const err = await t.throwsAsync(insert, { instanceOf: DBConnectionError })
  t.regex(err.message, /may have run/)
  // The server finishes what it got, once; the pool did not send it again.
  await waitFor(
    async () =>
      (await servers[0].sql("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'INSERT INTO ha_once%'", [name]))
        .rows[0].n === 0,
    { ms: 5000, what: 'the INSERT finished on the server' },
  )
  const n = (await servers[0].sql('SELECT count(*)::int AS n FROM ha_once WHERE tag = $1', [tag])).rows[0].n
  t.true(n <= 1, `inserted ${n} times`)
  t.is(pool.stats().groups.default.retries, 0)
  await pool.close()
})
