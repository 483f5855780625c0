'use strict'
// pg-boss 12 on pgdbpool/pg (a job sent and worked, LISTEN/NOTIFY on), run under Node 24 in a
// child process (pg-boss needs Node 22+; see helpers/pg-boss-child.mjs).
const test = require('ava')

const { consumerTest } = require('./helpers/consumer')

consumerTest(test, 'a job is sent, worked through LISTEN/NOTIFY and completed', { script: 'pg-boss-child.mjs', urlVariable: 'PGB_URL' }, (t, out) => {
  t.deepEqual(out.worked.data, { to: 'ann@example.com' })
  t.is(out.worked.id, out.sent)
  t.is(out.state, 'completed')
  t.deepEqual(out.output, { sent: true })
  t.deepEqual(out.errors, [])
  // Polling is every 30 s here: a pickup well within that came through the notification.
  t.true(out.pickupMs < 15000, `picked up after ${out.pickupMs} ms`)
})
