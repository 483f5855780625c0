'use strict'
// pgbench (C, libpq) on the same server as the libraries, as the ceiling they are a fraction
// of: the workloads it can express, prepared statements (`-M prepared`), one connection per
// client. Latency percentiles come from its per-transaction log.

const { execFileSync, spawn } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

/** The statements of each workload pgbench can run, as a pgbench script. */
const SCRIPTS = {
  select1: 'SELECT 1;\n',
  lookup: '\\set id random(1, 10000)\nSELECT id, name, qty FROM bench_items WHERE id = :id;\n',
}

/** Path of a pgbench binary: on PATH, in a PostgreSQL install, or installed from Debian when root. */
function findPgbench() {
  const candidates = ['pgbench', ...listDirs('/usr/lib/postgresql').map((v) => `/usr/lib/postgresql/${v}/bin/pgbench`)]
  for (const c of candidates) {
    try {
      execFileSync(c, ['--version'], { stdio: 'ignore' })
      return c
    } catch {}
  }
  if (process.platform === 'linux' && process.getuid && process.getuid() === 0) {
    process.stderr.write('pgbench not found: installing postgresql-client from Debian...\n')
    try {
      execFileSync(
        'sh',
        [
          '-c',
          'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=120 --no-install-recommends postgresql-client',
        ],
        { stdio: 'ignore', timeout: 300000 },
      )
      execFileSync('pgbench', ['--version'], { stdio: 'ignore' })
      return 'pgbench'
    } catch {}
  }
  return null
}

function listDirs(dir) {
  try {
    return fs.readdirSync(dir).sort().reverse()
  } catch {
    return []
  }
}

function percentile(sorted, p) {
  if (sorted.length === 0) return 0
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]
}

/** Runs one cell: `clients` connections for `durationMs`; resolves to a result row like the libraries'. */
function runPgbench(bin, endpoint, workload, clients, durationMs, concurrency) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgbench-'))
  const script = path.join(dir, `${workload}.sql`)
  fs.writeFileSync(script, SCRIPTS[workload])
  const seconds = Math.max(1, Math.round(durationMs / 1000))
  const args = [
    '-n',
    '-M',
    'prepared',
    '-f',
    script,
    '-c',
    String(clients),
    '-j',
    String(Math.min(clients, os.cpus().length)),
    '-T',
    String(seconds),
    '-l',
    `--log-prefix=${path.join(dir, 'log')}`,
    '-h',
    endpoint.host,
    '-p',
    String(endpoint.port),
    '-U',
    endpoint.user,
    endpoint.name,
  ]
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { env: { ...process.env, PGPASSWORD: endpoint.pass ?? '' }, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (out += d))
    const killer = setTimeout(() => child.kill('SIGKILL'), durationMs + 60000)
    child.on('close', (code) => {
      clearTimeout(killer)
      try {
        if (code !== 0) throw new Error(`pgbench exited with ${code}: ${out.trim().split('\n').slice(-3).join(' | ')}`)
        const tps = Number((out.match(/tps = ([\d.]+) \(without initial connection time\)/) || [])[1])
        const latencies = []
        for (const f of fs.readdirSync(dir).filter((n) => n.startsWith('log'))) {
          for (const line of fs.readFileSync(path.join(dir, f), 'utf8').split('\n')) {
            const us = Number(line.split(' ')[2])
            if (Number.isFinite(us) && line) latencies.push(us / 1000)
          }
        }
        latencies.sort((a, b) => a - b)
        resolve({
          lib: 'pgbench',
          workload,
          concurrency,
          clients,
          ops: latencies.length,
          errors: 0,
          qps: tps,
          p50: percentile(latencies, 50),
          p99: percentile(latencies, 99),
          eluUs: NaN,
          peakRssMb: NaN,
        })
      } catch (e) {
        reject(e)
      } finally {
        fs.rmSync(dir, { recursive: true, force: true })
      }
    })
  })
}

module.exports = { SCRIPTS, findPgbench, runPgbench }
