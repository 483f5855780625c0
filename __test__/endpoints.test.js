'use strict'
const test = require('ava')

const { Pool, DBOfflineError } = require('..')
const { startServer, waitFor, freePort, guardProcess, external } = require('./helpers/pg')

guardProcess(test)

const servers = []
let seq = 0

test.before(async () => {
  if (external) return
  for (let i = 0; i < 3; i++) servers.push(await startServer({ embedded: true }))
})

test.after.always(async () => {
  await Promise.all(servers.map((s) => s.destroy()))
})

function app() {
  return `pgdbpool-ep${process.pid}-${++seq}`
}

function endpoints(application_name) {
  return servers.map((s, i) => ({ ...s.endpoint, id: `s${i}`, application_name }))
}

async function holdMany(pool, group, n) {
  const handlers = Array.from({ length: n }, () => pool.handler(group))
  await Promise.all(handlers.map((h) => h.acquire()))
  return handlers
}

test.serial('connections of a group spread over its endpoints; a bound group uses only its endpoint', async (t) => {
  if (external) return t.pass('needs embedded servers')
  const name = app()
  const pool = new Pool({
    type: 'non-threaded',
    db: endpoints(name),
    groups: {
      default: { connection_count: 6 },
      only1: { connection_count: 3, endpoints: ['s1'] },
      lb: { connection_count: 4, endpoints: ['s0', 's2'], balance: 'least-busy' },
    },
  })
  await pool.ready
  const held = await holdMany(pool, 'default', 6)
  t.deepEqual(
    pool.stats().groups.default.endpoints.map((e) => e.inUse),
    [2, 2, 2],
  )
  // The server agrees with the pool's accounting, endpoint by endpoint (all groups together).
  const counts = await Promise.all(servers.map((s) => s.sessions(name)))
  const perEndpoint = [0, 1, 2].map((i) => Object.values(pool.stats().groups).reduce((n, g) => n + (g.endpoints.find((e) => e.id === `s${i}`)?.size ?? 0), 0))
  t.deepEqual(counts, perEndpoint)
  await Promise.all(held.map((h) => h.release()))
  t.deepEqual(
    pool.stats().groups.default.endpoints.map((e) => e.size),
    [2, 2, 2],
  )

  const bound = await holdMany(pool, 'only1', 3)
  t.deepEqual(
    pool.stats().groups.only1.endpoints.map((e) => [e.id, e.inUse]),
    [['s1', 3]],
  )
  await Promise.all(bound.map((h) => h.release()))

  const lb = await holdMany(pool, 'lb', 4)
  t.deepEqual(
    pool.stats().groups.lb.endpoints.map((e) => e.inUse),
    [2, 2],
  )
  await Promise.all(lb.map((h) => h.release()))
  await pool.close()
  await waitFor(async () => (await Promise.all(servers.map((s) => s.sessions(name)))).every((n) => n === 0), { what: 'sessions closed' })
})

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
