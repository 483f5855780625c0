'use strict'
// Timeouts against silent and black-holed servers: connect_timeout bans a silent endpoint,
// checkout never waits past acquire_timeout, query_timeout is enforced client-side with a cancel
// on the server, a black-holed endpoint is banned and re-admitted when healed, and close does not
// wait for a connect in flight to time out.
const test = require('ava')

const { Pool, DBConnectionError, PoolTimeoutError } = require('..')
const { guardProcess, waitFor, external } = require('./helpers/pg')
const { useFaultServers, endpoint, holdMany, timed } = require('./helpers/faults')
const { startSilentServer } = require('./helpers/proxy')

guardProcess(test)

const { servers, cleanups, app, proxyTo } = useFaultServers(test, 'timeouts')

test.serial('a silent endpoint (accepts, never answers) is banned after connect_timeout; the pool serves from the other', async (t) => {
  if (external) return t.pass('needs embedded servers')
  const name = app()
  const silent = await startSilentServer()
  cleanups.push(() => silent.close())
  const pool = new Pool({
    type: 'non-threaded',
    health_interval: 100,
    db: [
      { ...servers[0].endpoint, ...silent.endpoint, id: 'silent', application_name: name, connect_timeout: 1 },
      endpoint(servers[1], 's1', name, { connect_timeout: 1 }),
    ],
    groups: { default: { connection_count: 4, acquire_timeout: 3000 } },
  })
  const ready = await timed(pool.ready)
  t.is(ready.error, undefined)
  t.true(ready.ms < 2500, `init took ${ready.ms} ms`)
  const ep = pool.stats().groups.default.endpoints[0]
  t.true(ep.banned)
  t.regex(ep.lastError, /connect timeout after 1s/)
  for (let i = 0; i < 20; i++) {
    const r = await timed(pool.query('SELECT inet_server_port() AS port'))
    t.is(r.error, undefined)
    t.is(r.value.rows[0].port, servers[1].port)
    t.true(r.ms < 1000, `query took ${r.ms} ms`)
  }
  t.true(silent.accepted >= 1)
  await pool.close()
})

test.serial('checkout never waits past acquire_timeout, even when connecting takes longer', async (t) => {
  const silent = await startSilentServer()
  cleanups.push(() => silent.close())
  const pool = new Pool({
    type: 'non-threaded',
    db: { host: '127.0.0.1', port: silent.port, name: 'x', user: 'x', pass: 'x', connect_timeout: 10 },
    groups: { default: { connection_count: 2, acquire_timeout: 400 } },
  })
  pool.ready.catch(() => {})
  for (const run of [() => pool.query('SELECT 1'), () => pool.handler().query('SELECT 1')]) {
    const r = await timed(run())
    t.true(r.error instanceof PoolTimeoutError, String(r.error))
    t.regex(r.error.message, /acquire_timeout \(400 ms\)/)
    t.true(r.ms >= 350 && r.ms < 2000, `took ${r.ms} ms`)
  }
  await pool.close({ timeout: 0 })
})

test.serial('established connections black-holed: queries time out client-side, the endpoint is banned, and re-admitted when healed', async (t) => {
  if (external) return t.pass('needs embedded servers')
  const name = app()
  const proxy = await proxyTo(servers[0])
  const extra = { connect_timeout: 1, query_timeout: 300 }
  const pool = new Pool({
    type: 'non-threaded',
    health_interval: 100,
    db: [endpoint(servers[0], 'p0', name, extra, proxy), endpoint(servers[1], 's1', name, extra)],
    groups: { default: { connection_count: 4 } },
  })
  await pool.ready
  await Promise.all((await holdMany(pool, 'default', 4)).map((h) => h.release()))
  t.deepEqual(
    pool.stats().groups.default.endpoints.map((e) => e.size),
    [2, 2],
  )
  await proxy.blackhole()
  const started = Date.now()
  // Whatever lands on the black-holed node fails within query_timeout + 1 s; nothing hangs.
  const results = await Promise.all(Array.from({ length: 8 }, () => timed(pool.query('SELECT inet_server_port() AS port'))))
  for (const r of results) {
    t.true(r.ms < 3000, `settled after ${r.ms} ms`)
    if (r.error) {
      t.true(r.error instanceof DBConnectionError, String(r.error))
      t.regex(r.error.message, /no answer within 1300 ms .*may have run/)
    } else {
      t.is(r.value.rows[0].port, servers[1].port)
    }
  }
  await waitFor(() => pool.stats().groups.default.endpoints[0].banned, { ms: 3000, what: 'black-holed endpoint banned' }).catch((e) => {
    throw new Error(
      `${e.message}; endpoint: ${JSON.stringify(pool.stats().groups.default.endpoints[0])}; results: ${results.map((r) => (r.error ? r.error.message : r.value.rows[0].port)).join(' | ')}`,
    )
  })
  t.true(Date.now() - started < 4000)
  // Banned: the pool serves from the other endpoint without delay.
  for (let i = 0; i < 10; i++) {
    const r = await timed(pool.query('SELECT inet_server_port() AS port'))
    t.is(r.error, undefined)
    t.true(r.ms < 1000, `query took ${r.ms} ms`)
  }
  await proxy.pass()
  await waitFor(() => !pool.stats().groups.default.endpoints[0].banned, { ms: 8000, what: 'endpoint re-admitted' })
  await waitFor(
    async () => {
      const hs = await holdMany(pool, 'default', 4)
      const ports = await Promise.all(hs.map(async (h) => (await h.query('SELECT inet_server_port() AS port')).rows[0].port))
      await Promise.all(hs.map((h) => h.release()))
      return ports.includes(servers[0].port)
    },
    { ms: 10000, every: 50, what: 'traffic on the healed endpoint' },
  )
  await pool.close()
})

test.serial('query_timeout is enforced client-side too, and the statement is cancelled on the server', async (t) => {
  if (external) return t.pass('needs embedded servers')
  const name = app()
  const pool = new Pool({
    type: 'non-threaded',
    db: endpoint(servers[0], 's0', name, { query_timeout: 300, connect_timeout: 2 }),
    groups: { default: { connection_count: 1 } },
  })
  const h = pool.handler()
  // The server's own statement_timeout is off in this session, so only the client can stop it.
  await h.query('SET statement_timeout = 0')
  const r = await timed(h.query('SELECT pg_sleep(30)'))
  t.true(r.error instanceof DBConnectionError, String(r.error))
  t.regex(r.error.message, /no answer within 1300 ms \(query_timeout, checked client-side\); the statement was cancelled and may have run/)
  t.true(r.ms >= 1250 && r.ms < 4000, `took ${r.ms} ms`)
  await h.release()
  await waitFor(
    async () =>
      (await servers[0].sql("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND query = 'SELECT pg_sleep(30)'", [name])).rows[0]
        .n === 0,
    { ms: 5000, what: 'pg_sleep cancelled on the server' },
  )
  // The server answered a probe, so it is not banned; the pool goes on with a new session.
  t.deepEqual((await pool.query('SELECT 1 AS x')).rows, [{ x: 1 }])
  t.false(pool.stats().groups.default.endpoints[0].banned)
  await pool.close()
})

test.serial('close ends as soon as a connect in flight ends, not at its timeout', async (t) => {
  if (external) return t.pass('needs embedded servers')
  const name = app()
  const proxy = await proxyTo(servers[0])
  const pool = new Pool({
    type: 'non-threaded',
    db: endpoint(servers[0], 'p0', name, {}, proxy),
    groups: { default: { connection_count: 2 } },
  })
  await pool.ready
  const held = pool.handler()
  await held.acquire()
  // A second checkout opens a connection through a slow network (150 ms each way: about a
  // second to connect); it lets go of whatever it gets at once.
  await proxy.delay(150)
  const second = pool.handler()
  const got = timed(second.acquire().finally(() => second.release()))
  await waitFor(() => pool.stats().groups.default.opening === 1, { what: 'a connect in flight' })
  const closing = timed(pool.close({ timeout: 8000 }))
  await held.release()
  const closed = await closing
  t.is(closed.error, undefined)
  // The open ends (and is dropped, the pool being closed) about a second in; close must notice
  // that rather than wait all 8 s.
  t.true(closed.ms < 5000, `close took ${closed.ms} ms`)
  await got
  t.is(pool.stats().groups.default.size, 0)
  await proxy.pass()
})
