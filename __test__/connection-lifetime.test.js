'use strict'
// How long a connection lives: replaced after max_uses checkouts (never for its use count with
// max_uses 0), and every disconnect counted by its reason (idle_timeout, max_lifetime, broken, closed).
const test = require('ava')

const { Pool } = require('..')
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
  const app = `pgdbpool-life${process.pid}-${++seq}`
  const pool = new Pool({ type: 'non-threaded', db: { ...server.endpoint, application_name: app }, groups, ...extra })
  return { pool, app }
}

function runs(values) {
  const out = []
  for (const v of values) {
    if (out.length && out[out.length - 1][0] === v) out[out.length - 1][1]++
    else out.push([v, 1])
  }
  return out.map(([, n]) => n)
}

test('max_uses: a connection is closed after that many checkouts and replaced in the background', async (t) => {
  const { pool, app } = makePool({ default: { connection_count: 1, max_uses: 3 } })
  await pool.ready
  const pids = []
  for (let i = 0; i < 9; i++) pids.push((await pool.query('SELECT pg_backend_pid() AS pid')).rows[0].pid)
  t.deepEqual(runs(pids), [3, 3, 3])
  // A handler is one checkout, however many statements it runs.
  const h = pool.handler()
  const a = (await h.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
  const b = (await h.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
  await h.release()
  t.is(a, b)
  t.false(pids.includes(a))
  const s = await waitFor(
    () => {
      const g = pool.stats().groups.default
      return g.size === 1 && g.idle === 1 && g.disconnectsByReason.max_uses === 3 && g
    },
    { ms: 5000, what: 'replacement connection idle' },
  )
  t.is(s.disconnects, 3)
  t.true((await server.sessions(app)) <= 1)
  await pool.close()
})

test('max_uses 0 (the default) never replaces a connection for its use count', async (t) => {
  const { pool } = makePool({ default: { connection_count: 1 } })
  const pids = new Set()
  for (let i = 0; i < 20; i++) pids.add((await pool.query('SELECT pg_backend_pid() AS pid')).rows[0].pid)
  t.is(pids.size, 1)
  t.is(pool.stats().groups.default.disconnectsByReason.max_uses, 0)
  await pool.close()
})

test('disconnects are counted by reason: idle_timeout, max_lifetime, broken, closed', async (t) => {
  const { pool } = makePool(
    {
      idle: { connection_count: 2, idle_timeout: 100 },
      life: { connection_count: 1, max_lifetime: 150, idle_timeout: 0 },
      kill: { connection_count: 1, idle_timeout: 0 },
      keep: { connection_count: 2, idle_timeout: 0 },
    },
    { health_interval: 30 },
  )
  await pool.ready
  const by = (g) => pool.stats().groups[g].disconnectsByReason

  const held = [pool.handler('idle'), pool.handler('idle')]
  await Promise.all(held.map((h) => h.query('SELECT 1')))
  await Promise.all(held.map((h) => h.release()))
  await waitFor(() => by('idle').idle_timeout >= 2, { ms: 5000, what: 'idle_timeout disconnects' })
  t.is(pool.stats().groups.idle.size, 0)

  await pool.query('SELECT 1', [], { group: 'life' })
  await waitFor(() => by('life').max_lifetime >= 1, { ms: 5000, what: 'max_lifetime disconnect' })

  const pid = (await pool.query('SELECT pg_backend_pid() AS pid', [], { group: 'kill' })).rows[0].pid
  await server.sql('SELECT pg_terminate_backend($1)', [pid])
  await waitFor(() => by('kill').broken === 1, { ms: 5000, what: 'broken disconnect' })
  t.deepEqual((await pool.query('SELECT 1 AS x', [], { group: 'kill' })).rows, [{ x: 1 }])

  const keep = [pool.handler('keep'), pool.handler('keep')]
  await Promise.all(keep.map((h) => h.query('SELECT 1')))
  await Promise.all(keep.map((h) => h.release()))
  await pool.close()
  t.is(by('keep').closed, 2)
  t.is(pool.stats().groups.keep.disconnects, 2)
  for (const g of ['idle', 'kill']) t.is(by(g).wrong_role + by(g).error + by(g).max_uses, 0, g)
})
