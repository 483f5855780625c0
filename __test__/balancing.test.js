'use strict'
// How a group's connections spread over its endpoints: evenly by default, only on the endpoints
// a group is bound to, least-busy balancing; the servers' session counts agree with the pool's.
const test = require('ava')

const { Pool } = require('..')
const { guardProcess, waitFor, external } = require('./helpers/pg')
const { useServers, holdMany } = require('./helpers/servers')

guardProcess(test)

const { servers, app, endpoints } = useServers(test, 3, 'bal')

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
