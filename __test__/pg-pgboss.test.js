'use strict'
// pg-boss 12 on pgdbpool/pg (a job sent and worked, LISTEN/NOTIFY on), run under Node 24 in a
// child process (pg-boss needs Node 22+; see helpers/pg-boss-child.mjs).
const test = require('ava')
const path = require('node:path')

const { startServer, guardProcess } = require('./helpers/pg')
const { runNode24 } = require('./helpers/node24')

guardProcess(test)

let server

test.before(async () => {
  server = await startServer()
})

test.after.always(async () => {
  if (server) await server.destroy()
})

test('a job is sent, worked through LISTEN/NOTIFY and completed', async (t) => {
  const run = await runNode24(path.join(__dirname, 'helpers', 'pg-boss-child.mjs'), { env: { PGB_URL: server.url }, timeout: 90_000 })
  const line = run.stdout.trim().split('\n').pop()
  let out
  try {
    out = JSON.parse(line)
  } catch {
    t.fail(`no result from the child (code ${run.code}, signal ${run.signal}):\n${run.stdout}\n${run.stderr}`)
    return
  }
  t.is(run.code, 0, `${out.failure ?? ''}\n${run.stderr}`)
  t.deepEqual(out.worked.data, { to: 'ann@example.com' })
  t.is(out.worked.id, out.sent)
  t.is(out.state, 'completed')
  t.deepEqual(out.output, { sent: true })
  t.deepEqual(out.errors, [])
  // Polling is every 30 s here: a pickup well within that came through the notification.
  t.true(out.pickupMs < 15000, `picked up after ${out.pickupMs} ms`)
})
