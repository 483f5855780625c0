'use strict'
// stats() of a threaded pool: a checkout waiting in this thread counts once, and one waiting in
// another thread's pool object shows as waiting here too (the core's queue holds its request).
const test = require('ava')
const { Worker } = require('node:worker_threads')

const { Pool } = require('..')
const { startServer, waitFor, guardProcess } = require('./helpers/pg')

guardProcess(test)

let server
test.before(async () => {
  server = await startServer()
})
test.after.always(async () => {
  if (server) await server.destroy()
})

// Joins the shared pool, takes a connection (waiting until there is one), reports, leaves.
const workerSource = `
const { parentPort, workerData } = require('node:worker_threads')
const lib = require(workerData.lib)
;(async () => {
  await lib.init(workerData.config)
  parentPort.postMessage({ joined: true })
  const n = await lib.withHandler('default', async (db) => (await db.query('SELECT 7 AS n')).rows[0].n)
  await lib.close()
  parentPort.postMessage({ ok: true, n })
})().catch((e) => parentPort.postMessage({ ok: false, error: String(e && e.stack) }))
`

test('threaded stats: own waiting checkouts count once; another thread’s waiting checkout counts too', async (t) => {
  const config = {
    type: 'threaded',
    db: { ...server.endpoint, application_name: `pgdbpool-tstats${process.pid}` },
    groups: { default: { connection_count: 1, acquire_timeout: 20000 } },
  }
  const pool = new Pool(config)
  t.teardown(() => pool.close({ timeout: 0 }))
  await pool.ready
  const holder = pool.handler('default')
  await holder.acquire()
  t.is(pool.stats().groups.default.waiting, 0)

  // A second checkout of this thread waits in JS; its acquire request waits in the core.
  const second = pool.handler('default')
  const secondGot = second.acquire()
  await waitFor(() => pool.stats().groups.default.waiting > 0, { ms: 5000, what: 'the second checkout waiting' })
  t.is(pool.stats().groups.default.waiting, 1, 'counted once, not once in JS and once in the core')

  const worker = new Worker(workerSource, { eval: true, workerData: { config, lib: require.resolve('..') } })
  t.teardown(() => worker.terminate())
  const messages = []
  const finished = new Promise((resolve, reject) => {
    worker.on('message', (m) => {
      messages.push(m)
      if ('ok' in m) resolve(m)
    })
    worker.once('error', reject)
  })
  await waitFor(() => pool.stats().groups.default.waiting === 2, { ms: 10000, what: "the worker's checkout waiting, seen from this thread" })
  t.is(pool.stats().groups.default.waiting, 2)

  await holder.release()
  await secondGot
  await second.release()
  const result = await finished
  t.true(result.ok, result.error)
  t.is(result.n, 7)
  await waitFor(() => pool.stats().groups.default.waiting === 0, { ms: 5000, what: 'nothing waiting' })
})
