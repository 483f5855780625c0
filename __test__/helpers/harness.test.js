'use strict'
// Smoke tests of the HA test harness itself: replication cluster, fault proxy, silent server,
// PgBouncer. Serial, because the cluster's roles change from test to test.
const test = require('ava')
const { Client } = require('pg')

const { guardProcess, waitFor, PASSWORD } = require('./pg')
const { startCluster } = require('./cluster')
const { startProxy, startSilentServer } = require('./proxy')
const { startPgBouncer } = require('./pgbouncer')

guardProcess(test)

let cluster
const cleanups = []

test.before(async () => {
  cluster = await startCluster({ standbys: 2 })
})

test.after.always(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {})
  if (cluster) await cluster.destroy()
})

/** A connected pg Client to 127.0.0.1:port; its late 'error' events are expected here. */
async function connect(port, opts = {}) {
  const client = new Client({ host: '127.0.0.1', port, user: 'postgres', password: PASSWORD, database: 'postgres', ...opts })
  client.on('error', () => {})
  await client.connect()
  return client
}

async function elapsed(fn) {
  const start = Date.now()
  await fn()
  return Date.now() - start
}

test.serial('a row written on the primary shows up on both standbys', async (t) => {
  const { primary, standbys } = cluster
  t.is(standbys.length, 2)
  await primary.sql('CREATE TABLE ha_smoke (id int PRIMARY KEY, v text)')
  await primary.sql("INSERT INTO ha_smoke VALUES (1, 'from node0')")
  await cluster.waitForReplication()
  for (const s of standbys) {
    t.deepEqual((await s.sql('SELECT v FROM ha_smoke WHERE id = 1')).rows, [{ v: 'from node0' }], s.name)
  }
  const replicas = await primary.sql('SELECT application_name, state FROM pg_stat_replication ORDER BY 1')
  t.deepEqual(replicas.rows, [
    { application_name: 'node1', state: 'streaming' },
    { application_name: 'node2', state: 'streaming' },
  ])
})

test.serial('standbys are in recovery and reject writes', async (t) => {
  t.false(await cluster.primary.isInRecovery())
  for (const s of cluster.standbys) {
    t.true(await s.isInRecovery(), s.name)
    const e = await t.throwsAsync(s.sql("INSERT INTO ha_smoke VALUES (2, 'nope')"))
    t.is(e.code, '25006', 'read_only_sql_transaction')
  }
})

test.serial('failover: promote standby 1, repoint standby 2 (and the old primary) to it', async (t) => {
  const [s1, s2] = cluster.standbys
  const old = cluster.primary
  await cluster.waitForReplication()
  await old.stop()
  await t.throwsAsync(old.sql('SELECT 1'))
  await s1.promote()
  t.false(await s1.isInRecovery())
  t.is(cluster.leader, s1)
  await s1.sql("INSERT INTO ha_smoke VALUES (2, 'from node1')")

  await cluster.repointStandby(s2, s1)
  await cluster.waitForReplication()
  t.deepEqual((await s2.sql('SELECT v FROM ha_smoke WHERE id = 2')).rows, [{ v: 'from node1' }])
  t.true(await s2.isInRecovery())
  // Following the promoted node means crossing to its new timeline.
  t.is((await s2.sql('SELECT received_tli FROM pg_stat_wal_receiver')).rows[0].received_tli, 2)

  // The cleanly stopped old primary can rejoin as a standby (switchover).
  await cluster.repointStandby(old, s1)
  await s1.sql("INSERT INTO ha_smoke VALUES (3, 'again')")
  await cluster.waitForReplication()
  t.is((await old.sql('SELECT count(*)::int AS n FROM ha_smoke')).rows[0].n, 3)
  t.true(await old.isInRecovery())
})

test.serial('kill() is an immediate shutdown; start() recovers', async (t) => {
  const s2 = cluster.standbys[1]
  await s2.kill()
  t.false(s2.running)
  await t.throwsAsync(s2.sql('SELECT 1'))
  await s2.start()
  await s2.waitStreaming()
  await cluster.waitForReplication()
  t.is((await s2.sql('SELECT count(*)::int AS n FROM ha_smoke')).rows[0].n, 3)
})

test.serial('proxy: pass, delay, retarget', async (t) => {
  const [n1, n2] = cluster.standbys
  const proxy = await startProxy(n1.port)
  cleanups.push(() => proxy.close())
  const c = await connect(proxy.port)
  t.is((await c.query('SELECT inet_server_port() AS p')).rows[0].p, n1.port)
  t.is(proxy.accepted, 1)
  t.is(proxy.active, 1)

  await proxy.delay(150)
  // A round trip crosses the proxy twice.
  const ms = await elapsed(() => c.query('SELECT 1'))
  t.true(ms >= 290, `round trip took ${ms} ms`)
  // Many chunks in flight at once still arrive whole and in order.
  const big = (await c.query("SELECT repeat('0123456789', 100000) AS s")).rows[0].s
  t.is(big.length, 1000000)
  t.true(/^(0123456789)+$/.test(big))
  await proxy.pass()
  const fast = await elapsed(() => c.query('SELECT 1'))
  t.true(fast < 290, `round trip took ${fast} ms after pass()`)
  await c.end()

  proxy.retarget(n2.port)
  const c2 = await connect(proxy.port)
  t.is((await c2.query('SELECT inet_server_port() AS p')).rows[0].p, n2.port)
  await c2.end()
  await waitFor(() => proxy.active === 0, { ms: 5000, what: 'proxied connections to close' })
  await proxy.close()
})

test.serial('proxy: black hole holds traffic both ways until healed', async (t) => {
  const proxy = await startProxy(cluster.leader.port)
  cleanups.push(() => proxy.close())
  const c = await connect(proxy.port)
  await proxy.blackhole()
  await t.throwsAsync(c.query({ text: 'SELECT 1', query_timeout: 300 }), { message: /timeout/ })
  await t.throwsAsync(connect(proxy.port, { connectionTimeoutMillis: 300 }), { message: /timeout/ })
  t.is(proxy.accepted, 2)
  // Terminate is held too; once healed it goes through and the server closes the session.
  const ending = c.end()
  await proxy.pass()
  await ending
  const c2 = await connect(proxy.port)
  t.deepEqual((await c2.query('SELECT 1 AS one')).rows, [{ one: 1 }])
  await c2.end()
  await proxy.close()
})

test.serial('proxy: reset sends RST to open connections, and to new ones with keep', async (t) => {
  const proxy = await startProxy(cluster.leader.port)
  cleanups.push(() => proxy.close())
  const c = await connect(proxy.port)
  await proxy.reset()
  await t.throwsAsync(c.query('SELECT 1'))
  t.is(proxy.active, 0)
  await proxy.reset({ keep: true })
  const e = await t.throwsAsync(connect(proxy.port, { connectionTimeoutMillis: 2000 }))
  t.regex(e.code || e.message, /ECONNRESET|EPIPE|terminated/)
  await proxy.pass()
  const c2 = await connect(proxy.port)
  t.deepEqual((await c2.query('SELECT 1 AS one')).rows, [{ one: 1 }])
  await c2.end()
  t.is(proxy.accepted, 3)
  await proxy.close()
})

test.serial('proxy: refuse closes the listener; pass reopens it on the same port', async (t) => {
  const proxy = await startProxy(cluster.leader.port)
  cleanups.push(() => proxy.close())
  const port = proxy.port
  const open = await connect(port)
  proxy.refuse()
  const e = await t.throwsAsync(connect(port, { connectionTimeoutMillis: 2000 }))
  t.is(e.code, 'ECONNREFUSED')
  // Connections made before keep working.
  t.deepEqual((await open.query('SELECT 1 AS one')).rows, [{ one: 1 }])
  await open.end()
  await proxy.pass()
  t.is(proxy.port, port)
  const c = await connect(port)
  t.deepEqual((await c.query('SELECT 1 AS one')).rows, [{ one: 1 }])
  await c.end()
  await proxy.close()
})

test.serial('a silent server makes a connect time out', async (t) => {
  const silent = await startSilentServer()
  cleanups.push(() => silent.close())
  let e
  const ms = await elapsed(async () => {
    e = await t.throwsAsync(connect(silent.port, { connectionTimeoutMillis: 300 }))
  })
  t.regex(e.message, /timeout/)
  t.true(ms >= 250 && ms < 3000, `connect gave up after ${ms} ms`)
  t.is(silent.accepted, 1)
  await silent.close()
})

test.serial('pgbouncer in transaction mode answers queries', async (t) => {
  const bouncer = await startPgBouncer(cluster.leader, { poolMode: 'transaction', poolSize: 1 })
  cleanups.push(() => bouncer.destroy())
  const [a, b] = await Promise.all([connect(bouncer.port), connect(bouncer.port)])
  t.deepEqual((await a.query('SELECT v FROM ha_smoke WHERE id = 1')).rows, [{ v: 'from node0' }])
  // Two clients, one server connection: transaction pooling hands it to whoever runs a transaction.
  const pa = (await a.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
  const pb = (await b.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
  t.is(pa, pb)
  const pools = await bouncer.console('SHOW POOLS')
  t.is(pools.rows.find((r) => r.database === 'postgres').pool_mode, 'transaction')
  await Promise.all([a.end(), b.end()])
  await bouncer.destroy()
  t.false(bouncer.running)
})
