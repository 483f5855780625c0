'use strict'
// Where a test file's pools connect: a test server, or PgBouncer in front of it when
// PGDBPOOL_TEST_VIA=pgbouncer (pgbouncer.test.js sets it and loads several test files into one
// process; they then share one server and one PgBouncer). PgBouncer runs in transaction mode and
// every group gets `statement_cache_size: 0`; admin and inspection queries (server.sql,
// pg_stat_activity, pg_terminate_backend) still go straight to the server.

const { Pool } = require('../..')
const { startServer } = require('./pg')

const viaBouncer = process.env.PGDBPOOL_TEST_VIA === 'pgbouncer'

let started
let users = 0
// Row ids and application names derive from seq, shared by every file of the process; through
// PgBouncer they start higher, so both variants can share an external server.
let seq = viaBouncer ? 500 : 0

async function start() {
  const server = await startServer()
  let bouncer
  if (viaBouncer) {
    const { startPgBouncer } = require('./pgbouncer')
    // `options` carries query_timeout/session_tmp_buffer at startup; PgBouncer rejects it unless told to ignore it.
    bouncer = await startPgBouncer(server, { poolMode: 'transaction', poolSize: 20, settings: { ignore_startup_parameters: 'options' } })
    // The backend-killing stress test gets a database (and so a PgBouncer server pool) of its own.
    if ((await server.sql("SELECT 1 FROM pg_database WHERE datname = 'pgdbpool_kill'")).rowCount === 0) await server.sql('CREATE DATABASE pgdbpool_kill')
  }
  await server.sql('CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, name text)')
  await server.sql(`CREATE TABLE IF NOT EXISTS deferred_parent (id int PRIMARY KEY)`)
  await server.sql(`CREATE TABLE IF NOT EXISTS deferred_child (id int PRIMARY KEY, parent int REFERENCES deferred_parent(id) DEFERRABLE INITIALLY DEFERRED)`)
  return { server, bouncer }
}

/**
 * Registers the file's before/after hooks and returns its view of the target. `server` and
 * `bouncer` are set once the before hook has run.
 */
function useTarget(test) {
  const target = {
    viaBouncer,
    server: undefined,
    bouncer: undefined,
    /** The number of the last pool `makePool` made. */
    get seq() {
      return seq
    },
    /** Where pools connect: the server, or PgBouncer in front of it. */
    endpoint: () => (viaBouncer ? target.bouncer : target.server).endpoint,
    url() {
      const e = target.endpoint()
      return `postgres://${e.user}:${e.pass}@${e.host}:${e.port}/${e.name}`
    },
    /** `groups` as given; through PgBouncer each group also gets `statement_cache_size: 0`. */
    groupsFor(groups) {
      if (!viaBouncer) return groups
      return Object.fromEntries(Object.entries(groups).map(([name, g]) => [name, { statement_cache_size: 0, ...g }]))
    },
    /**
     * Sessions of `app` the pool holds: server sessions, or through PgBouncer its client
     * connections to PgBouncer (server connections there are shared and outlive the pool).
     */
    async sessions(app) {
      if (!viaBouncer) return target.server.sessions(app)
      const clients = await target.bouncer.console('SHOW CLIENTS')
      return clients.rows.filter((c) => c.application_name === app).length
    },
    /** A private pool with its own application_name, so server-side counts are per test. */
    makePool(groups = { default: { connection_count: 2 } }, endpointExtra = {}) {
      const app = `pgdbpool-t${process.pid}-${++seq}`
      const pool = new Pool({ type: 'non-threaded', db: { ...target.endpoint(), application_name: app, ...endpointExtra }, groups: target.groupsFor(groups) })
      return { pool, app }
    },
  }

  test.before(async () => {
    users++
    started ??= start()
    Object.assign(target, await started)
  })

  test.after.always('pgbouncer stayed up', (t) => {
    if (target.bouncer && !target.bouncer.running) t.fail(`pgbouncer exited during the run; its log:\n${target.bouncer.log()}`)
    t.pass()
  })

  test.after.always(async () => {
    if (--users > 0 || started === undefined) return
    const { server, bouncer } = await started.catch(() => ({}))
    started = undefined
    if (bouncer) await bouncer.destroy()
    if (server) await server.destroy()
  })

  return target
}

module.exports = { useTarget }
