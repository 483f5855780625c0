'use strict'
// PgBouncer (the Debian `pgbouncer` binary) in front of a test server: the server-side
// pooler users put between many app servers and PostgreSQL, usually in transaction mode.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { spawn, execFile, execFileSync } = require('node:child_process')
const { Client } = require('pg')
const { waitFor, freePort } = require('./pg')

const LOG_TAIL = 16384
const isRoot = process.getuid && process.getuid() === 0

// pgbouncer processes we spawned: a test process that exits without destroy() must not leave them.
const live = new Set()
process.on('exit', () => {
  for (const proc of live) {
    try {
      proc.kill('SIGKILL')
    } catch {}
  }
})

function findBinary() {
  // Debian installs it in /usr/sbin, which a non-login root shell's PATH may lack.
  const dirs = [...(process.env.PATH || '').split(path.delimiter), '/usr/sbin', '/usr/local/sbin', '/usr/bin']
  for (const dir of dirs) {
    const file = path.join(dir || '.', 'pgbouncer')
    try {
      fs.accessSync(file, fs.constants.X_OK)
      return file
    } catch {}
  }
  return null
}

let installing = null

/** The pgbouncer binary's path; installs the Debian package once if missing and we are root. */
function ensurePgBouncer() {
  const found = findBinary()
  if (found) return Promise.resolve(found)
  if (!isRoot || !fs.existsSync('/usr/bin/apt-get')) {
    return Promise.reject(new Error('pgbouncer is not installed (Debian/Ubuntu: apt-get install pgbouncer); the PgBouncer tests need it'))
  }
  installing ??= new Promise((resolve, reject) => {
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
    execFile(
      'sh',
      ['-c', 'apt-get update -qq && apt-get install -y -qq -o DPkg::Lock::Timeout=120 --no-install-recommends pgbouncer'],
      { env, maxBuffer: 64 << 20 },
      (err, stdout, stderr) => {
        const bin = findBinary()
        if (bin) resolve(bin)
        else reject(new Error(`installing pgbouncer failed: ${err ? err.message : 'binary not found afterwards'}\n${stderr}`))
      },
    )
  })
  return installing
}

/** uid/gid of an unprivileged user: pgbouncer refuses to run as root. */
function unprivilegedIds() {
  if (!isRoot) return {}
  for (const user of ['postgres', 'nobody']) {
    try {
      const uid = Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }))
      const gid = Number(execFileSync('id', ['-g', user], { encoding: 'utf8' }))
      return { uid, gid }
    } catch {}
  }
  throw new Error('no unprivileged user (postgres or nobody) to run pgbouncer as')
}

/** Within deadline `ms`, resolves to the promise's value; otherwise to `undefined`. */
function within(promise, ms) {
  let timer
  const timeout = new Promise((resolve) => {
    timer = setTimeout(resolve, ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/**
 * Starts PgBouncer in front of `server` (anything with an `endpoint` like pg.js's Server) on a
 * free 127.0.0.1 port and waits until it accepts a login. Clients log in with the server's
 * user and password; `settings` adds or overrides [pgbouncer] ini settings.
 */
async function startPgBouncer(server, { poolMode = 'transaction', poolSize = 10, authType = 'scram-sha-256', settings = {}, ms = 20000 } = {}) {
  const bin = await ensurePgBouncer()
  const target = server.endpoint
  const ids = unprivilegedIds()
  const port = await freePort()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgdbpool-pgbouncer-'))
  const q = (s) => `"${String(s).replace(/"/g, '""')}"`
  // A plain-text password lets pgbouncer answer any client auth_type and log in to the server
  // with whatever it asks for (the embedded servers use 'password', i.e. clear text).
  fs.writeFileSync(path.join(dir, 'userlist.txt'), `${q(target.user)} ${q(target.pass)}\n`, { mode: 0o600 })
  const ini = {
    listen_addr: '127.0.0.1',
    listen_port: port,
    unix_socket_dir: '',
    auth_type: authType,
    auth_file: path.join(dir, 'userlist.txt'),
    admin_users: target.user,
    pool_mode: poolMode,
    default_pool_size: poolSize,
    max_client_conn: 1000,
    logfile: path.join(dir, 'pgbouncer.log'),
    pidfile: path.join(dir, 'pgbouncer.pid'),
    // Defaults are 15 s: too slow for tests that restart the server behind it.
    server_login_retry: 1,
    server_connect_timeout: 5,
    ...settings,
  }
  const text = [
    '[databases]',
    `* = host=${target.host} port=${target.port}`,
    '',
    '[pgbouncer]',
    ...Object.entries(ini).map(([k, v]) => `${k} = ${v}`),
    '',
  ].join('\n')
  const iniFile = path.join(dir, 'pgbouncer.ini')
  fs.writeFileSync(iniFile, text)
  if (ids.uid !== undefined) {
    for (const f of fs.readdirSync(dir)) fs.chownSync(path.join(dir, f), ids.uid, ids.gid)
    fs.chownSync(dir, ids.uid, ids.gid)
  }

  const proc = spawn(bin, [iniFile], { ...ids, stdio: ['ignore', 'ignore', 'pipe'] })
  live.add(proc)
  let log = ''
  proc.stderr.on('data', (chunk) => {
    log = (log + chunk).slice(-LOG_TAIL)
  })
  let running = true
  const exited = new Promise((resolve) => {
    const done = () => {
      running = false
      live.delete(proc)
      resolve(true)
    }
    proc.once('exit', done)
    proc.once('error', (e) => {
      log += `\nspawn failed: ${e.message}`
      done()
    })
  })
  const readLog = () => {
    try {
      return fs.readFileSync(ini.logfile, 'utf8').slice(-LOG_TAIL)
    } catch {
      return log
    }
  }

  const endpoint = { host: '127.0.0.1', port, name: target.name, user: target.user, pass: target.pass }
  const clientConfig = (database = endpoint.name) => ({ host: endpoint.host, port, user: endpoint.user, password: endpoint.pass, database })
  async function admin(fn, database) {
    const client = new Client(clientConfig(database))
    client.on('error', () => {})
    await client.connect()
    try {
      return await fn(client)
    } finally {
      await client.end().catch(() => {})
    }
  }

  const bouncer = {
    port,
    dir,
    endpoint,
    get running() {
      return running
    },
    log: readLog,
    clientConfig,
    admin,
    sql: (text, params) => admin((c) => c.query(text, params)),
    /** A command on the admin console (SHOW POOLS, PAUSE, RECONFIGURE, ...). */
    console: (command) => admin((c) => c.query(command), 'pgbouncer'),
    /** SIGTERM (immediate shutdown up to 1.22; 1.23+ waits for clients), then SIGKILL. */
    async stop({ ms = 3000 } = {}) {
      if (!running) return
      proc.kill('SIGTERM')
      if (await within(exited, ms)) return
      proc.kill('SIGKILL')
      await exited
    },
    async destroy() {
      await bouncer.stop().catch(() => {})
      fs.rmSync(dir, { recursive: true, force: true })
    },
  }

  try {
    const state = await waitFor(
      async () => {
        if (!running) return 'exited'
        try {
          await bouncer.sql('SELECT 1')
          return 'up'
        } catch {
          return false
        }
      },
      { ms, every: 50, what: `pgbouncer on ${port} to accept a login` },
    )
    if (state === 'exited') throw new Error('pgbouncer exited during startup')
  } catch (e) {
    const message = `${e.message}; log:\n${readLog()}\n${log}`
    await bouncer.destroy()
    throw new Error(message)
  }
  return bouncer
}

module.exports = { startPgBouncer, ensurePgBouncer }
