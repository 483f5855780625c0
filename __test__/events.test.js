'use strict'
// The pool's events: acquire and release of handlers, leak reports past leak_threshold, and the
// core's lifecycle events (connect, ban, disconnect).
const test = require('ava')

const { Pool } = require('..')
const { guardProcess, waitFor } = require('./helpers/pg')
const { useTarget } = require('./helpers/target')

guardProcess(test)

const target = useTarget(test)

test('events: acquire and release are emitted; a handler held past leak_threshold is reported with the stack where it was taken', async (t) => {
  const { pool } = target.makePool({ default: { connection_count: 1, leak_threshold: 50 } })
  const seen = []
  pool.on('acquire', (e) => seen.push(['acquire', e.group]))
  pool.on('release', (e) => seen.push(['release', e.group]))
  const leaks = []
  pool.on('leak', (e) => leaks.push(e))
  const db = pool.handler()
  await db.acquire()
  await waitFor(() => leaks.length === 1, { what: 'leak report' })
  t.is(leaks[0].group, 'default')
  t.true(leaks[0].heldMs >= 50)
  t.regex(leaks[0].stack, /events\.test\.js/)
  await db.release()
  t.deepEqual(seen, [
    ['acquire', 'default'],
    ['release', 'default'],
  ])
  // A listener that throws does not break the pool.
  pool.on('acquire', () => {
    throw new Error('listener bug')
  })
  const again = pool.handler()
  await again.query('SELECT 1')
  await again.release()
  t.is(pool.stats().groups.default.inUse, 0)
  await pool.close()
})

test('core lifecycle events reach listeners: connect, ban of an unreachable endpoint, disconnect at close', async (t) => {
  const { freePort } = require('./helpers/pg')
  const deadPort = await freePort()
  const pool = new Pool({
    type: 'non-threaded',
    db: [
      { ...target.server.endpoint, id: 'live', application_name: `pgdbpool-ev${process.pid}` },
      { ...target.server.endpoint, id: 'dead', port: deadPort, connect_timeout: 2 },
    ],
    groups: { default: { connection_count: 2 } },
  })
  const events = []
  for (const type of ['connect', 'ban', 'disconnect']) pool.on(type, (e) => events.push(e))
  await pool.ready
  await waitFor(() => events.some((e) => e.type === 'connect' && e.endpoint === 'live'), { what: 'connect event' })
  await waitFor(() => events.some((e) => e.type === 'ban' && e.endpoint === 'dead'), { what: 'ban event' })
  const ban = events.find((e) => e.type === 'ban')
  t.is(typeof ban.at, 'number')
  t.truthy(ban.reason)
  t.false(JSON.stringify(events).includes(target.server.endpoint.pass), 'no password in events')
  await pool.close()
  await waitFor(() => events.some((e) => e.type === 'disconnect'), { what: 'disconnect event' })
})
