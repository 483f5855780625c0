// Run by pg-graphile-worker.test.js under Node 24 (graphile-worker 0.18 needs Node 22+):
// graphile-worker with `pgPool` a pgdbpool/pg Pool. Its migrations are multi-statement scripts,
// and it finds new jobs through LISTEN "jobs:insert" on a client it keeps checked out. Polling
// is set to a minute here, so a quick pickup means the notification arrived. Prints one JSON line.
import { EventEmitter } from 'node:events'
import pg from 'pgdbpool/pg'
import { run, quickAddJob } from 'graphile-worker'

import { deadline, report } from './consumer-child.mjs'

const pgPool = new pg.Pool({ connectionString: process.env.GW_URL, max: 6 })
const out = { errors: [] }
pgPool.on('error', (e) => out.errors.push(String(e?.message ?? e)))

await report(out, async () => {
  let done
  const ran = new Promise((resolve) => (done = resolve))
  const events = new EventEmitter()
  const listening = new Promise((resolve) => events.once('pool:listen:success', resolve))
  const runner = await run({
    pgPool,
    events,
    concurrency: 2,
    noHandleSignals: true,
    pollInterval: 60_000,
    taskList: {
      hello: async (payload, helpers) => {
        done({ payload, jobId: helpers.job.id, attempts: helpers.job.attempts })
      },
    },
  })
  // The listener is up once graphile-worker says so; then a job added by anyone is picked up.
  await Promise.race([listening, deadline(20000, 'LISTEN')])
  // The LISTEN statement itself is sent right after that event: wait until the server has it.
  for (let i = 0; i < 100; i++) {
    const r = await pgPool.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE query LIKE \'LISTEN "jobs:insert"%\'')
    if (r.rows[0].n > 0) break
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  const started = Date.now()
  const job = await quickAddJob({ pgPool }, 'hello', { name: 'Bobby Tables' })
  const got = await Promise.race([ran, deadline(20000, 'the job running')])
  out.pickupMs = Date.now() - started
  out.added = String(job.id)
  out.ran = { ...got, jobId: String(got.jobId) }
  await runner.stop()
  const left = await pgPool.query('SELECT count(*)::int AS n FROM graphile_worker._private_jobs')
  out.left = left.rows[0].n
  await pgPool.end()
})
