'use strict'
// Runs inside a worker_thread: joins the pool and keeps `hold` connections busy for a while.
const { parentPort, workerData } = require('node:worker_threads')
const lib = require('../..')

;(async () => {
  const { config, hold, rounds } = workerData
  await lib.init(config)
  for (let r = 0; r < rounds; r++) {
    await Promise.all(
      Array.from({ length: hold }, () =>
        lib.withHandler('default', async (db) => {
          await db.query('SELECT pg_sleep(0.05)')
        }),
      ),
    )
  }
  const stats = lib.stats()
  await lib.close()
  parentPort.postMessage({ ok: true, users: stats.users, max: stats.groups.default.max })
})().catch((e) => parentPort.postMessage({ ok: false, error: String(e && e.stack) }))
