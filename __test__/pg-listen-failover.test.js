'use strict'
// Pool-level LISTEN across a failover, on a real streaming-replication cluster: pgdbpool's
// `pool.listen` (and pgdbpool/pg's over a wrapped group) LISTENs on the primary, and after the
// primary stops and the standby is promoted, LISTENs again on the new primary and says that
// notifications may have been missed meanwhile.
const test = require('ava')

const pg = require('pgdbpool/pg')
const { Pool } = require('..')
const { waitFor, guardProcess, external } = require('./helpers/pg')
const { startCluster } = require('./helpers/cluster')

guardProcess(test)

let cluster

test.before(async () => {
  if (external) return
  cluster = await startCluster({ standbys: 1 })
  await cluster.waitForReplication()
})

test.after.always(async () => {
  if (cluster) await cluster.destroy()
})

test.serial('LISTEN follows the primary: notifications before and after a failover, reconnected: true in between', async (t) => {
  if (external) return t.pass('needs embedded servers')
  const [p, s] = cluster.nodes
  const pool = new Pool({
    type: 'non-threaded',
    health_interval: 100,
    db: cluster.nodes.map((n) => ({ ...n.endpoint, id: n.name, application_name: 'pgdbpool-listen-fo', connect_timeout: 1 })),
    groups: { write: { connection_count: 3, target_session_attrs: 'read-write', acquire_timeout: 2000 } },
  })
  const wrapped = new pg.Pool({ pool, group: 'write' })
  try {
    await pool.ready
    const heard = []
    const viaPg = []
    const listens = []
    const listener = await pool.listen('fo_jobs', (payload) => heard.push(payload), {
      group: 'write',
      onListen: (info) => listens.push(info.reconnected),
      heartbeat: 500,
    })
    const pgListener = await wrapped.listen('fo_jobs', (payload) => viaPg.push(payload))
    t.deepEqual(listens, [false])
    await p.sql("NOTIFY fo_jobs, 'before'")
    await waitFor(() => heard.includes('before') && viaPg.includes('before'), { what: 'the first notification' })

    await p.stop()
    await s.promote()
    await waitFor(() => listens.length === 2, { ms: 20000, what: 'the listener to LISTEN again on the new primary' })
    t.deepEqual(listens, [false, true])
    await s.sql("NOTIFY fo_jobs, 'after'")
    await waitFor(() => heard.includes('after') && viaPg.includes('after'), { ms: 10000, what: 'a notification from the new primary' })
    t.deepEqual(heard, ['before', 'after'])
    t.deepEqual(viaPg, ['before', 'after'])
    await listener.close()
    await pgListener.close()
  } finally {
    await wrapped.end()
    await pool.close()
  }
})
