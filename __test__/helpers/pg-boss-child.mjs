// Run by pg-pgboss.test.js under Node 24 (pg-boss 12 needs Node 22+): pg-boss on pgdbpool/pg.
// pg-boss takes no pg.Pool; it takes a `db` (its IDatabase: `executeSql`, optionally `listen`),
// which a pgdbpool/pg Pool fills as is: `pool.query` and `pool.listen(channel, onNotification,
// onReconnect)`. Prints one JSON line of what happened; exits non-zero on failure.
import pg from 'pgdbpool/pg'
import { PgBoss } from 'pg-boss'

import { deadline, report } from './consumer-child.mjs'

const pool = new pg.Pool({ connectionString: process.env.PGB_URL, max: 6 })
const db = {
  executeSql: (text, values) => pool.query(text, values),
  listen: (channel, onNotification, onReconnect) => pool.listen(channel, onNotification, onReconnect),
}
const boss = new PgBoss({ db, useListenNotify: true, pollingIntervalSeconds: 30, schema: 'pgboss_test' })
const out = { errors: [] }
boss.on('error', (e) => out.errors.push(String(e?.message ?? e)))

await report(out, async () => {
  await boss.start()
  await boss.createQueue('emails')
  const worked = new Promise((resolve) => {
    boss.work('emails', async ([job]) => {
      resolve({ id: job.id, data: job.data })
      return { sent: true }
    })
  })
  const started = Date.now()
  const id = await boss.send('emails', { to: 'ann@example.com' })
  const job = await Promise.race([worked, deadline(20000, 'the job being worked')])
  out.sent = id
  out.worked = job
  out.pickupMs = Date.now() - started
  // Completion is recorded by pg-boss after the handler returns.
  for (let i = 0; i < 200; i++) {
    const found = await boss.getJobById('emails', id)
    if (found?.state === 'completed') {
      out.state = found.state
      out.output = found.output
      break
    }
    await new Promise((r) => setTimeout(r, 50))
  }
  await boss.stop({ graceful: true, timeout: 5000 })
  await pool.end()
})
