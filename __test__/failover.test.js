'use strict'
// Role-aware groups on a real streaming-replication cluster (primary + 2 standbys): reads on
// standbys, prefer-standby, a standby stopped and restarted under read load, and the primary
// stopped and a standby promoted under write load. Serial: the cluster's roles change, and the
// failover test, which leaves node0 stopped, runs last.
const test = require('ava')
const { setTimeout: pace } = require('node:timers/promises')

const { Pool, DBQueryError, DBConnectionError, DBOfflineError, PoolTimeoutError } = require('..')
const { waitFor, guardProcess, external } = require('./helpers/pg')
const { startCluster } = require('./helpers/cluster')

guardProcess(test)

let cluster
let seq = 0

test.before(async () => {
  if (external) return
  cluster = await startCluster({ standbys: 2 })
  await cluster.primary.sql('CREATE TABLE ha_writes (id serial PRIMARY KEY, port int NOT NULL)')
  await cluster.waitForReplication()
})

test.after.always(async () => {
  if (cluster) await cluster.destroy()
})

function config(groups, extra = {}) {
  const name = `pgdbpool-fo${process.pid}-${++seq}`
  return {
    type: 'non-threaded',
    health_interval: 100,
    db: cluster.nodes.map((n) => ({ ...n.endpoint, id: n.name, application_name: name, connect_timeout: 1 })),
    groups,
    ...extra,
  }
}

async function portsOf(pool, group, n) {
  const hs = Array.from({ length: n }, () => pool.handler(group))
  try {
    const rs = await Promise.all(hs.map((h) => h.query('SELECT inet_server_port() AS port')))
    return rs.map((r) => r.rows[0].port)
  } finally {
    await Promise.all(hs.map((h) => h.release()))
  }
}

/** Runs `workers` loops of `op` (paced, so failing fast does not spin) until stopped; logs each outcome. */
function load(op, workers = 4) {
  const log = []
  let running = true
  const loops = Array.from({ length: workers }, async () => {
    while (running) {
      const at = Date.now()
      try {
        log.push({ at, port: (await op()).rows[0].port })
      } catch (error) {
        log.push({ at, error })
      }
      await pace(3)
    }
  })
  return {
    log,
    async stop() {
      running = false
      await Promise.all(loops)
    },
  }
}

test.serial('roles come from the cluster; a standby group reads only from standbys; prefer-standby moves to them', async (t) => {
  if (external) return t.pass('needs embedded servers')
  const [p, s1, s2] = cluster.nodes
  const pool = new Pool(
    config({
      write: { connection_count: 2, target_session_attrs: 'read-write' },
      read: { connection_count: 4, target_session_attrs: 'standby' },
      pref: { connection_count: 4, target_session_attrs: 'prefer-standby' },
    }),
  )
  await pool.ready
  t.deepEqual(
    pool.stats().groups.read.endpoints.map((e) => [e.id, e.role, e.readOnly]),
    [
      ['node0', 'primary', false],
      ['node1', 'standby', true],
      ['node2', 'standby', true],
    ],
  )
  t.deepEqual(await portsOf(pool, 'write', 2), [p.port, p.port])
  const reads = await portsOf(pool, 'read', 4)
  t.deepEqual(reads.sort(), [s1.port, s1.port, s2.port, s2.port].sort())
  // prefer-standby: the warm-up connection on the primary is moved to a standby.
  await waitFor(async () => (await portsOf(pool, 'pref', 4)).every((port) => port !== p.port), { ms: 5000, every: 50, what: 'prefer-standby on standbys only' })
  await pool.close()
})

test.serial('reads spread over the standbys by weight (within ±10 %), counted by the server that answered', async (t) => {
  if (external) return t.pass('needs embedded servers')
  const [, s1, s2] = cluster.nodes
  const cfg = config({ read: { connection_count: 8, target_session_attrs: 'standby' } })
  cfg.db[1].weight = 1
  cfg.db[2].weight = 3
  const pool = new Pool(cfg)
  await pool.ready
  const counts = new Map([
    [s1.port, 0],
    [s2.port, 0],
  ])
  const total = 800
  // In waves of 8 concurrent one-shot reads and handler reads, so connections on both nodes
  // are in play; each statement reports the port of the server that ran it.
  for (let done = 0; done < total; done += 8) {
    const wave = Array.from({ length: 8 }, (_, i) =>
      i % 2
        ? pool.query('SELECT inet_server_port() AS port', [], { group: 'read' })
        : pool.withHandler('read', (db) => db.query('SELECT inet_server_port() AS port')),
    )
    for (const r of await Promise.all(wave)) counts.set(r.rows[0].port, counts.get(r.rows[0].port) + 1)
  }
  const share1 = counts.get(s1.port) / total
  const share2 = counts.get(s2.port) / total
  t.log(`node1 ${share1}, node2 ${share2}`)
  t.is(counts.get(s1.port) + counts.get(s2.port), total, 'no read on the primary')
  t.true(Math.abs(share1 - 0.25) <= 0.025, `node1 share ${share1} (weight 1 of 4)`)
  t.true(Math.abs(share2 - 0.75) <= 0.1 * 0.75, `node2 share ${share2} (weight 3 of 4)`)
  await pool.close()
})

test.serial('prefer-standby falls back to the primary while no standby is up, and returns to the standbys', async (t) => {
  if (external) return t.pass('needs embedded servers')
  const [p, s1, s2] = cluster.nodes
  const pool = new Pool(config({ pref: { connection_count: 3, target_session_attrs: 'prefer-standby' } }))
  await pool.ready
  await waitFor(async () => (await portsOf(pool, 'pref', 3)).every((port) => port !== p.port), { ms: 5000, every: 50, what: 'reads on standbys' })
  await Promise.all([s1.stop(), s2.stop()])
  try {
    // Every read succeeds meanwhile, on the primary.
    for (let i = 0; i < 10; i++) t.deepEqual(await portsOf(pool, 'pref', 3), [p.port, p.port, p.port])
  } finally {
    await Promise.all([s1.start(), s2.start()])
  }
  await waitFor(async () => (await portsOf(pool, 'pref', 3)).every((port) => port !== p.port), { ms: 10000, every: 50, what: 'reads back on standbys' })
  await pool.close()
})

test.serial('a standby stopped under read load: banned within 1 s, no read fails that was not sent, traffic again within 5 s of its restart', async (t) => {
  if (external) return t.pass('needs embedded servers')
  const [, s1, s2] = cluster.nodes
  await Promise.all([s1, s2].map((s) => s.waitStreaming()))
  const pool = new Pool(config({ read: { connection_count: 4, target_session_attrs: 'standby' } }))
  await pool.ready
  const reads = load(() => pool.query('SELECT inet_server_port() AS port', [], { group: 'read' }))
  let stoppedAt = 0
  let restartedAt = 0
  try {
    await waitFor(() => [s1.port, s2.port].every((port) => reads.log.some((e) => e.port === port)), { ms: 5000, what: 'reads on both standbys' })
    await s2.stop()
    stoppedAt = Date.now()
    await waitFor(() => pool.stats().groups.read.endpoints[2].banned, { ms: 1000, every: 10, what: 'node2 banned' })
    await waitFor(() => reads.log.filter((e) => e.at > stoppedAt + 100 && e.port === s1.port).length >= 20, { ms: 5000, what: 'reads go on, on node1' })
    await s2.start()
    restartedAt = Date.now()
    await waitFor(() => reads.log.some((e) => e.at >= restartedAt && e.port === s2.port), { ms: 5000, every: 10, what: 'reads on node2 again' })
  } finally {
    await reads.stop()
  }
  const failures = reads.log.filter((e) => e.error)
  // Only reads already running when node2 shut down may fail, and each says what happened.
  t.true(failures.length <= 4, failures.map((e) => e.error.message).join('; '))
  for (const { error } of failures) {
    const inFlight = (error instanceof DBQueryError && error.sqlState === '57P01') || (error instanceof DBConnectionError && /may have run/.test(error.message))
    t.true(inFlight, `${error.constructor.name}: ${error.message}`)
  }
  t.true(reads.log.filter((e) => e.port).length > 50)
  await pool.close()
})

test.serial(
  'the primary stops and a standby is promoted under write load: clear errors meanwhile, writes on the new primary within 5 s, none on a read-only node',
  async (t) => {
    if (external) return t.pass('needs embedded servers')
    const [p, s1, s2] = cluster.nodes
    const pool = new Pool(
      config({
        write: { connection_count: 4, target_session_attrs: 'read-write', acquire_timeout: 2000 },
        read: { connection_count: 2, target_session_attrs: 'standby' },
      }),
    )
    await pool.ready
    const writes = load(() => pool.query('INSERT INTO ha_writes (port) SELECT inet_server_port() RETURNING port', [], { group: 'write' }))
    let stoppedAt = 0
    let promotedAt = 0
    let firstOnNew = 0
    try {
      await waitFor(() => writes.log.filter((e) => e.port === p.port).length >= 20, { ms: 5000, what: 'writes on node0' })
      await p.stop()
      stoppedAt = Date.now()
      await waitFor(() => writes.log.some((e) => e.error && e.at > stoppedAt), { ms: 5000, what: 'writes failing without a primary' })
      await s1.promote()
      promotedAt = Date.now()
      const first = await waitFor(() => writes.log.find((e) => e.port === s1.port), { ms: 5000, every: 10, what: 'a write on the promoted node1' })
      firstOnNew = first.at
      await waitFor(() => writes.log.filter((e) => e.port === s1.port).length >= 20, { ms: 5000, what: 'writes go on, on node1' })
    } finally {
      await writes.stop()
    }
    t.true(firstOnNew - promotedAt < 5000, `first write on the new primary ${firstOnNew - promotedAt} ms after the promotion`)
    const ok = writes.log.filter((e) => e.port)
    // Every write landed on the primary of its time, never on a standby.
    t.true(ok.every((e) => e.port === p.port || e.port === s1.port))
    t.true(ok.filter((e) => e.port === s1.port).every((e) => e.at >= stoppedAt))
    const failures = writes.log.filter((e) => e.error)
    t.true(failures.length > 0)
    for (const { error } of failures) {
      // Never a write refused by a read-only node: none was sent to one.
      t.not(error.sqlState, '25006', error.message)
      const clear =
        error instanceof DBOfflineError ||
        error instanceof PoolTimeoutError ||
        (error instanceof DBQueryError && ['57P01', '57P02', '57P03'].includes(error.sqlState)) ||
        (error instanceof DBConnectionError && /may have run/.test(error.message))
      t.true(clear, `${error.constructor.name}: ${error.message}`)
    }
    const offline = failures.find((e) => e.error instanceof DBOfflineError)
    t.truthy(offline, 'writes without a primary fail with DBOfflineError')
    t.regex(offline.error.message, new RegExp(`127\\.0\\.0\\.1:${s2.port}: server is a standby, target_session_attrs is 'read-write'`))
    t.deepEqual(
      pool.stats().groups.write.endpoints.map((e) => e.role),
      ['primary', 'primary', 'standby'],
    )
    await pool.close()
  },
)
