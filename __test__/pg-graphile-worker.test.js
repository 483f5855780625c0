'use strict'
// graphile-worker 0.18 on pgdbpool/pg (`pgPool`): migrations, a job added and run, found through
// LISTEN/NOTIFY; under Node 24 in a child process (see helpers/graphile-worker-child.mjs).
const test = require('ava')

const { consumerTest } = require('./helpers/consumer')

consumerTest(
  test,
  'a job is added and run; the worker hears of it through LISTEN',
  { script: 'graphile-worker-child.mjs', urlVariable: 'GW_URL' },
  (t, out) => {
    t.deepEqual(out.ran.payload, { name: 'Bobby Tables' })
    t.is(out.ran.jobId, out.added)
    t.is(out.left, 0, 'the job was completed and removed')
    t.deepEqual(out.errors, [])
    t.true(out.pickupMs < 10000, `picked up after ${out.pickupMs} ms (polling is every 60 s)`)
  },
)
