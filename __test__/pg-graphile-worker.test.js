'use strict'
// graphile-worker 0.18 on pgdbpool/pg (`pgPool`): migrations, a job added and run, found through
// LISTEN/NOTIFY; under Node 24 in a child process (see helpers/graphile-worker-child.mjs).
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

test('a job is added and run; the worker hears of it through LISTEN', async (t) => {
  const run = await runNode24(path.join(__dirname, 'helpers', 'graphile-worker-child.mjs'), { env: { GW_URL: server.url }, timeout: 90_000 })
  const line = run.stdout.trim().split('\n').pop()
  let out
  try {
    out = JSON.parse(line)
  } catch {
    t.fail(`no result from the child (code ${run.code}, signal ${run.signal}):\n${run.stdout}\n${run.stderr}`)
    return
  }
  t.is(run.code, 0, `${out.failure ?? ''}\n${run.stderr}`)
  t.deepEqual(out.ran.payload, { name: 'Bobby Tables' })
  t.is(out.ran.jobId, out.added)
  t.is(out.left, 0, 'the job was completed and removed')
  t.deepEqual(out.errors, [])
  t.true(out.pickupMs < 10000, `picked up after ${out.pickupMs} ms (polling is every 60 s)`)
})
