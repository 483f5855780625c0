'use strict'
// Server roles (target_session_attrs) detected from the server and re-checked while the pool
// runs: a node that turns read-only (default_transaction_read_only + reload, as a demoted or
// fenced primary would) and back again, on plain embedded servers.
const test = require('ava')

const { Pool, DBQueryError, DBOfflineError } = require('..')
const { startServer, waitFor, guardProcess, external } = require('./helpers/pg')

guardProcess(test)

const servers = []
let seq = 0

test.before(async () => {
  if (external) return
  for (let i = 0; i < 2; i++) {
    const s = await startServer({ embedded: true })
    await s.sql('CREATE TABLE IF NOT EXISTS ha_writes (id serial PRIMARY KEY, port int NOT NULL)')
    servers.push(s)
  }
})

test.after.always(async () => {
  await Promise.all(servers.map((s) => s.destroy()))
})

function app() {
  return `pgdbpool-roles${process.pid}-${++seq}`
}

function endpoints(application_name, extra = {}) {
  return servers.map((s, i) => ({ ...s.endpoint, id: `s${i}`, application_name, connect_timeout: 2, ...extra }))
}

/** Makes new transactions on `server` read-only (or not), for every session, like a fenced primary. */
async function setReadOnly(server, on) {
  await server.admin(async (c) => {
    await c.query('SET default_transaction_read_only = off')
    await c.query(on ? 'ALTER SYSTEM SET default_transaction_read_only = on' : 'ALTER SYSTEM RESET default_transaction_read_only')
    await c.query('SELECT pg_reload_conf()')
  })
}

async function holdMany(pool, group, n) {
  const handlers = Array.from({ length: n }, () => pool.handler(group))
  await Promise.all(handlers.map((h) => h.acquire()))
  return handlers
}

/** Runs one write per handler of a full checkout and returns the server port each landed on. */
async function writePorts(pool, group, n) {
  const hs = await holdMany(pool, group, n)
  try {
    const rs = await Promise.all(hs.map((h) => h.query('INSERT INTO ha_writes (port) SELECT inet_server_port() RETURNING port')))
    return rs.map((r) => r.rows[0].port)
  } finally {
    await Promise.all(hs.map((h) => h.release()))
  }
}

test.afterEach.always(async () => {
  await Promise.all(servers.map((s) => setReadOnly(s, false)))
})

test.serial('roles are read from the server and shown per endpoint; read-only, primary and read-write groups pick their nodes', async (t) => {
  if (external) return t.pass('needs embedded servers')
  await setReadOnly(servers[1], true)
  const pool = new Pool({
    type: 'non-threaded',
    db: endpoints(app()),
    groups: {
      rw: { connection_count: 2, target_session_attrs: 'read-write' },
      ro: { connection_count: 2, target_session_attrs: 'read-only' },
      prim: { connection_count: 2, target_session_attrs: 'primary' },
      any: { connection_count: 2 },
    },
  })
  await pool.ready
  const roles = pool.stats().groups.any.endpoints.map((e) => [e.role, e.readOnly])
  t.deepEqual(roles, [
    ['primary', false],
    ['primary', true],
  ])
  for (const [group, inUse] of [
    ['rw', [2, 0]],
    ['ro', [0, 2]],
    ['prim', [1, 1]],
  ]) {
    const held = await holdMany(pool, group, 2)
    t.deepEqual(
      pool.stats().groups[group].endpoints.map((e) => e.inUse),
      inUse,
      group,
    )
    await Promise.all(held.map((h) => h.release()))
  }
  t.deepEqual(
    pool.stats().groups.rw.endpoints.map((e) => e.wrongRole),
    [false, true],
  )
  await pool.close()
})

test.serial('a read-write group stops using a node that turned read-only, and takes it back once it is writable again', async (t) => {
  if (external) return t.pass('needs embedded servers')
  const pool = new Pool({
    type: 'non-threaded',
    health_interval: 100,
    db: endpoints(app()),
    groups: { write: { connection_count: 4, target_session_attrs: 'read-write', acquire_timeout: 5000 } },
  })
  await pool.ready
  const before = await writePorts(pool, 'write', 4)
  t.deepEqual(before.sort(), [servers[0].port, servers[0].port, servers[1].port, servers[1].port].sort())
  // A release completes in the core a moment after release() returns.
  await waitFor(() => pool.stats().groups.write.endpoints.every((e) => e.idle === 2), { ms: 5000, what: 'two idle write connections on each node' })

  await setReadOnly(servers[1], true)
  // The health monitor checks the role through an idle session every health_interval.
  await waitFor(() => pool.stats().groups.write.endpoints[1].wrongRole, { ms: 5000, what: 's1 seen as read-only' })
  await waitFor(() => pool.stats().groups.write.endpoints[1].size === 0, { ms: 5000, what: "s1's idle write connections closed" })
  const s = pool.stats().groups.write
  t.is(s.endpoints[1].readOnly, true)
  t.true(s.disconnectsByReason.wrong_role >= 2, JSON.stringify(s.disconnectsByReason))
  // No write lands on the read-only node (and none fails).
  for (let round = 0; round < 5; round++) {
    t.deepEqual(await writePorts(pool, 'write', 4), [servers[0].port, servers[0].port, servers[0].port, servers[0].port])
  }
  const one = await Promise.all(
    Array.from({ length: 20 }, () => pool.query('INSERT INTO ha_writes (port) SELECT inet_server_port() RETURNING port', [], { group: 'write' })),
  )
  t.true(one.every((r) => r.rows[0].port === servers[0].port))

  await setReadOnly(servers[1], false)
  // The monitor re-probes the node the group avoids, and admits it once it fits again.
  await waitFor(() => !pool.stats().groups.write.endpoints[1].wrongRole, { ms: 5000, what: 's1 writable again' })
  await waitFor(async () => (await writePorts(pool, 'write', 4)).includes(servers[1].port), { ms: 10000, every: 50, what: 'writes on s1 again' })
  await pool.close()
})

test.serial('a write refused as read-only (SQLSTATE 25006) takes the node out of a read-write group at once', async (t) => {
  if (external) return t.pass('needs embedded servers')
  // No monitor round during the test: only the failed write can tell the pool.
  const pool = new Pool({
    type: 'non-threaded',
    health_interval: 600000,
    db: endpoints(app()),
    groups: { write: { connection_count: 2, target_session_attrs: 'read-write' } },
  })
  await pool.ready
  await writePorts(pool, 'write', 2)
  await setReadOnly(servers[1], true)
  // pg_reload_conf() reaches the server's sessions a moment later, so a write may still land on
  // s1 first; once one has been refused, none may go there again.
  const failures = []
  const after = []
  const deadline = Date.now() + 10000
  while (after.length < 20 && Date.now() < deadline) {
    try {
      const r = await pool.query('INSERT INTO ha_writes (port) SELECT inet_server_port() RETURNING port', [], { group: 'write' })
      if (failures.length > 0) after.push(r.rows[0].port)
    } catch (e) {
      failures.push(e)
    }
  }
  t.is(failures.length, 1, failures.map((e) => e.message).join('; '))
  t.true(failures[0] instanceof DBQueryError)
  t.is(failures[0].sqlState, '25006')
  t.is(after.length, 20)
  t.true(
    after.every((p) => p === servers[0].port),
    after.join(','),
  )
  t.true(pool.stats().groups.write.endpoints[1].wrongRole)
  await pool.close()
})

test.serial('no endpoint with the wanted role: DBOfflineError names each node and its role, without waiting', async (t) => {
  if (external) return t.pass('needs embedded servers')
  const pool = new Pool({
    type: 'non-threaded',
    db: endpoints(app()),
    groups: { any: { connection_count: 2 }, standby: { connection_count: 2, target_session_attrs: 'standby', acquire_timeout: 10000 } },
  })
  await t.throwsAsync(pool.ready, { instanceOf: DBOfflineError })
  const started = Date.now()
  const err = await t.throwsAsync(pool.query('SELECT 1', [], { group: 'standby' }), { instanceOf: DBOfflineError })
  t.true(Date.now() - started < 2000, `took ${Date.now() - started} ms`)
  for (const s of servers) t.true(err.message.includes(`127.0.0.1:${s.port}: server is a primary, target_session_attrs is 'standby'`), err.message)
  await pool.close()
})

test.serial('a node that turns read-only says so on the next round trip of a session: the role changes without a health check', async (t) => {
  if (external) return t.pass('needs embedded servers')
  // No health-monitor round during the test: only the session's own round trips can tell.
  const pool = new Pool({
    type: 'non-threaded',
    health_interval: 600000,
    db: [{ ...servers[1].endpoint, id: 's1', application_name: app(), connect_timeout: 2 }],
    groups: { default: { connection_count: 1 } },
  })
  await pool.ready
  const endpoint = () => pool.stats().groups.default.endpoints[0]
  t.is(endpoint().readOnly, false)
  const { rows } = await pool.query('SELECT pg_backend_pid() AS pid')
  await setReadOnly(servers[1], true)
  // The backend applies the reload at its next command; the ParameterStatus comes with that answer.
  const pids = new Set()
  await waitFor(
    async () => {
      pids.add((await pool.query('SELECT pg_backend_pid() AS pid')).rows[0].pid)
      return endpoint().readOnly
    },
    { ms: 10000, what: 'the reported read-only role' },
  )
  t.deepEqual([...pids], [rows[0].pid], 'learnt on the same session, not from a new one')
  t.is(endpoint().role, 'primary')
  await pool.close()
})
