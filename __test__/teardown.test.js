'use strict'
// No crash path at teardown (README "No crash path"): a process or a worker thread
// that ends while it holds handlers, transactions or statements in flight ends cleanly, with
// its own exit status and never an abort, and the server is left with no session of it (so none
// idle in transaction). Each scenario runs in a child process whose exit status and signal are
// asserted; the server is then checked from outside with pg_stat_activity.
const test = require('ava')
const path = require('node:path')
const { Worker } = require('node:worker_threads')

const { Pool, ConfigError } = require('..')
const { startServer, waitFor, guardProcess } = require('./helpers/pg')
const { runNode, jsonLines, assertCleanExit, ROOT } = require('./helpers/child')

guardProcess(test)

const CHILD = path.join(__dirname, 'helpers', 'teardown-child.js')

let server
let seq = 0

test.before(async () => {
  server = await startServer()
  await server.sql('CREATE TABLE IF NOT EXISTS teardown_rows (app text NOT NULL)')
})

test.after.always(async () => {
  if (server) await server.destroy()
})

function appName(tag) {
  return `pgdbpool-td${process.pid}-${++seq}-${tag}`
}

function configFor(app, extra = {}, endpoint = {}) {
  return {
    type: 'non-threaded',
    db: { ...server.endpoint, application_name: app, ...endpoint },
    groups: { default: { connection_count: 2, acquire_timeout: 5000 }, tx: { connection_count: 2, autocommit: false, acquire_timeout: 5000 } },
    ...extra,
  }
}

/** Waits until the server has no session of `app` left; none may be seen idle in a transaction after the child is gone. */
async function serverForgot(t, app) {
  const states = async () => (await server.sql('SELECT state FROM pg_stat_activity WHERE application_name = $1', [app])).rows.map((r) => r.state)
  await waitFor(async () => (await states()).length === 0, { ms: 15000, what: `no session of ${app} left` })
  t.deepEqual(await states(), [])
  const rows = await server.sql('SELECT count(*)::int AS n FROM teardown_rows WHERE app = $1', [app])
  t.is(rows.rows[0].n, 0, 'the open transaction was rolled back')
}

async function child(t, scenario, { app, config, args = [], go } = {}) {
  const result = await runNode(CHILD, [scenario, ...args], {
    env: { PGDBPOOL_CHILD_CONFIG: JSON.stringify(config), PGDBPOOL_CHILD_APP: app },
    timeout: 40000,
    onLine: go
      ? (line, proc) => {
          if (line.startsWith('ready'))
            go().then(
              () => proc.stdin.write('go\n'),
              (e) => proc.stdin.write('go\n') && t.fail(String(e)),
            )
        }
      : undefined,
  })
  return result
}

/** Until the server runs `n` statements `sql` for `app`. */
function running(app, sql, n = 1) {
  return waitFor(
    async () =>
      (await server.sql("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND query = $2 AND state = 'active'", [app, sql])).rows[0]
        .n >= n,
    { ms: 15000, what: `${sql} running` },
  )
}

test('the event loop ends while a handler is held: exit status 0, no abort, no session left', async (t) => {
  const app = appName('hold')
  const result = await child(t, 'loop-end-handler', { app, config: configFor(app) })
  assertCleanExit(t, result)
  t.regex(result.stdout, /ready/)
  await serverForgot(t, app)
})

test('the event loop ends inside an open transaction: exit status 0, the transaction rolled back', async (t) => {
  const app = appName('tx')
  const result = await child(t, 'loop-end-tx', { app, config: configFor(app) })
  assertCleanExit(t, result)
  t.regex(result.stdout, /ready true/)
  await serverForgot(t, app)
})

test('a pool that is never closed: exit status 0', async (t) => {
  const app = appName('open')
  const result = await child(t, 'loop-end-never-closed', { app, config: configFor(app) })
  assertCleanExit(t, result)
  await serverForgot(t, app)
})

test('process.exit() with handlers held, a transaction open and statements in flight: exit status 0', async (t) => {
  const app = appName('exit')
  const result = await child(t, 'exit-busy', {
    app,
    config: configFor(app),
    go: async () => {
      await running(app, 'SELECT pg_sleep(30)')
      await running(app, 'SELECT pg_sleep(31)')
    },
  })
  assertCleanExit(t, result)
  await serverForgot(t, app)
})

for (const type of ['threaded', 'non-threaded']) {
  test(`worker.terminate() of the only environment that loaded the addon (${type}): the process lives on`, async (t) => {
    const app = appName(`lastenv-${type}`)
    const result = await child(t, 'worker-last-env', {
      app,
      config: configFor(app),
      args: [type],
      go: async () => {
        await running(app, 'SELECT pg_sleep(30)')
        await running(app, 'SELECT pg_sleep(31)')
      },
    })
    assertCleanExit(t, result)
    t.regex(result.stdout, /terminated 1/)
    await serverForgot(t, app)
  })
}

test('a number the native constructor cannot use is a ConfigError, not an abort', async (t) => {
  const app = appName('ctor')
  const config = configFor(app)
  config.db.connect_timeout = 1e20
  const result = await child(t, 'constructor-out-of-range', { app, config })
  assertCleanExit(t, result)
  const [outcome] = jsonLines(result.stdout)
  t.is(outcome.threw, 'ConfigError', JSON.stringify(outcome))
  t.is(outcome.path, 'db.connect_timeout')
  // And in this process too, now that it cannot abort.
  t.throws(() => new Pool(config), { instanceOf: ConfigError, message: /^db\.connect_timeout: / })
})

// ---------- worker_threads terminated while they hold handlers (this process keeps the addon loaded) ----------

const WORKER_SOURCE = `
  const { parentPort, workerData } = require('node:worker_threads')
  const lib = require(${JSON.stringify(ROOT)})
  ;(async () => {
    const pool = new lib.Pool(workerData.config)
    await pool.ready
    const tx = pool.handler('tx')
    await tx.query('INSERT INTO teardown_rows (app) VALUES ($1)', [workerData.app])
    const busy = pool.handler('default')
    busy.query('SELECT pg_sleep(60)').catch(() => {})
    // An idle handler and a pipelined one-shot too.
    const idle = pool.handler('default')
    await idle.acquire().catch(() => {})
    pool.query('SELECT 1').catch(() => {})
    parentPort.postMessage('ready')
  })().catch((e) => parentPort.postMessage('error ' + (e && e.stack)))
`

async function terminateCycle(t, config, app) {
  const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { config, app } })
  const exited = new Promise((resolve) => worker.once('exit', resolve))
  const message = await new Promise((resolve, reject) => {
    worker.once('message', resolve)
    worker.once('error', reject)
  })
  t.is(message, 'ready')
  await running(app, 'SELECT pg_sleep(60)')
  const code = await worker.terminate()
  t.is(code, 1)
  await exited
}

for (const type of ['threaded', 'non-threaded']) {
  test.serial(`worker.terminate() while the worker holds handlers (${type}), 20 times in a row: no slot leaked, nothing left on the server`, async (t) => {
    const app = appName(`term-${type}`)
    // No statement_timeout: the worker's pg_sleep(60) ends only if the pool ends it.
    const config = configFor(app, { type }, { query_timeout: 0 })
    // With `threaded` this pool is the one the workers join: it must get their connections back.
    const pool = new Pool(config)
    await pool.ready
    for (let cycle = 0; cycle < 20; cycle++) {
      await terminateCycle(t, config, app)
      // Every slot of both groups can be taken again, well within acquire_timeout.
      const held = [pool.handler('default'), pool.handler('default'), pool.handler('tx'), pool.handler('tx')]
      await Promise.all(held.map((db) => db.acquire()))
      for (const db of held) await db.release()
      const stats = pool.stats()
      t.true(stats.groups.default.size <= 2 && stats.groups.tx.size <= 2, JSON.stringify(stats.groups))
      if (type === 'threaded') t.true(stats.groups.default.inUse === 0 && stats.groups.tx.inUse === 0, `cycle ${cycle}`)
      // The worker's statement and transaction are gone from the server.
      const left = await server.sql(
        "SELECT count(*) FILTER (WHERE query = 'SELECT pg_sleep(60)' AND state = 'active')::int AS sleeping, count(*) FILTER (WHERE state LIKE 'idle in transaction%')::int AS in_tx FROM pg_stat_activity WHERE application_name = $1",
        [app],
      )
      await waitFor(
        async () => {
          const r = await server.sql(
            "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND ((query = 'SELECT pg_sleep(60)' AND state = 'active') OR state LIKE 'idle in transaction%')",
            [app],
          )
          return r.rows[0].n === 0
        },
        { ms: 10000, what: `cycle ${cycle}: the worker's work gone from the server (${JSON.stringify(left.rows[0])})` },
      )
    }
    const rows = await server.sql('SELECT count(*)::int AS n FROM teardown_rows WHERE app = $1', [app])
    t.is(rows.rows[0].n, 0, 'every transaction of the workers was rolled back')
    await pool.close()
    await waitFor(async () => (await server.sessions(app)) === 0, { ms: 15000, what: 'all sessions closed' })
  })
}
