'use strict'
// Endpoints that are down: init succeeds degraded while one answers and the pool heals when it
// returns; with every endpoint down, DBOfflineError names each of them.
const test = require('ava')

const { Pool, DBOfflineError } = require('..')
const { guardProcess, waitFor, freePort, external } = require('./helpers/pg')
const { useServers, holdMany } = require('./helpers/servers')

guardProcess(test)

const { servers, app, endpoints } = useServers(test, 3, 'end')

test.serial('one endpoint down at init: init succeeds degraded, the pool heals when it returns', async (t) => {
  if (external) return t.pass('needs embedded servers')
  const name = app()
  const down = servers[2]
  await down.stop()
  const pool = new Pool({
    type: 'non-threaded',
    health_interval: 100,
    db: endpoints(name),
    groups: { default: { connection_count: 6, acquire_timeout: 10000 } },
  })
  await pool.ready
  const before = pool.stats().groups.default.endpoints
  t.true(before[2].banned)
  t.regex(before[2].lastError, /refused|connect/i)
  // Serves queries meanwhile, on the live endpoints only.
  for (let i = 0; i < 20; i++) t.deepEqual((await pool.query('SELECT 1 AS x')).rows, [{ x: 1 }])
  const held = await holdMany(pool, 'default', 6)
  t.deepEqual(
    pool.stats().groups.default.endpoints.map((e) => e.inUse),
    [3, 3, 0],
  )
  await Promise.all(held.map((h) => h.release()))

  await down.start()
  await waitFor(() => !pool.stats().groups.default.endpoints[2].banned, { ms: 15000, what: 'endpoint re-admitted' })
  // Under load, capacity moves back to the returned endpoint.
  await waitFor(
    async () => {
      const hs = await holdMany(pool, 'default', 6)
      await Promise.all(hs.map((h) => h.query('SELECT 1')))
      await Promise.all(hs.map((h) => h.release()))
      return (await down.sessions(name)) >= 1
    },
    { ms: 15000, every: 50, what: 'sessions on the returned endpoint' },
  )
  const total = (await Promise.all(servers.map((s) => s.sessions(name)))).reduce((a, b) => a + b, 0)
  t.true(total <= 6, `total sessions ${total}`)
  await pool.close()
})

test.serial('every endpoint down: DBOfflineError lists each endpoint', async (t) => {
  const ports = [await freePort(), await freePort()]
  const pool = new Pool({
    type: 'non-threaded',
    db: ports.map((port, i) => ({ id: `dead${i}`, host: '127.0.0.1', port, name: 'x', user: 'x', pass: 'x', connect_timeout: 2 })),
    groups: { default: { connection_count: 2, acquire_timeout: 3000 } },
  })
  const err = await t.throwsAsync(pool.ready, { instanceOf: DBOfflineError })
  t.is(err.code, 'DB_OFFLINE')
  for (const port of ports) t.true(err.message.includes(`127.0.0.1:${port}`), err.message)
  t.true(err.causes.length >= 1)
  const qerr = await t.throwsAsync(pool.query('SELECT 1'), { instanceOf: DBOfflineError })
  for (const port of ports) t.true(qerr.message.includes(`127.0.0.1:${port}`), qerr.message)
  t.is(pool.stats().groups.default.inUse, 0)
  t.is(pool.stats().groups.default.size, 0)
  await pool.close()
})
