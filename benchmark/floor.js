'use strict'
// `npm run benchmark:floor`: what a driver whose I/O runs on the JS thread can reach at
// concurrency 1, against pg.Client and pgdbpool (1 connection) on the same embedded server.
// The floor is a raw loop on the socket pg opened and authenticated: it writes a prepared
// statement's Bind/Execute/Sync and waits for ReadyForQuery, parsing nothing else. No driver
// can do less work per round trip on the JS thread; the gap between it and pgdbpool is what
// the hand-off to the core's worker thread costs. The libraries take turns for three rounds.
// `-- --prototype` also builds and runs benchmark/js-thread-prototype (Linux, macOS): one
// tokio-postgres session driven from the JS thread's libuv loop, kept there, handed over per
// statement, or left on a tokio worker.

const { execFileSync } = require('node:child_process')
const path = require('node:path')
const { startServer } = require('../__test__/helpers/pg')

const N = 20000
const WARM_UP = 3000
const ROUNDS = 3

/** One protocol message: type byte, length, body. */
function message(type, body) {
  const out = Buffer.alloc(5 + body.length)
  out[0] = type.charCodeAt(0)
  out.writeUInt32BE(4 + body.length, 1)
  body.copy(out, 5)
  return out
}

/** A raw round-trip loop over an authenticated pg.Client's socket, for statement `name`. */
function rawLoop(client, name) {
  const socket = client.connection.stream
  socket.removeAllListeners('data')
  // Bind (no parameters, default formats), Execute (all rows), Sync.
  const bind = message('B', Buffer.concat([Buffer.from(`\0${name}\0`), Buffer.alloc(6)]))
  const request = Buffer.concat([bind, message('E', Buffer.alloc(5)), message('S', Buffer.alloc(0))])
  let answered = () => {}
  // The answer ends with ReadyForQuery: 'Z', length 5, status.
  socket.on('data', (chunk) => {
    if (chunk.length >= 6 && chunk[chunk.length - 6] === 0x5a) answered()
  })
  return () =>
    new Promise((resolve) => {
      answered = resolve
      socket.write(request)
    })
}

async function measure(run) {
  for (let i = 0; i < WARM_UP; i++) await run()
  const latencies = new Float64Array(N)
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  for (let i = 0; i < N; i++) {
    const a = performance.now()
    await run()
    latencies[i] = performance.now() - a
  }
  const wall = performance.now() - t0
  const cpu = process.cpuUsage(cpu0)
  latencies.sort()
  return { qps: (N / wall) * 1000, p50: latencies[N >> 1] * 1000, cpu: (cpu.user + cpu.system) / N }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1]

/** Builds benchmark/js-thread-prototype and loads it. */
function loadPrototype() {
  const dir = path.join(__dirname, 'js-thread-prototype')
  execFileSync('cargo', ['build', '--release', '--manifest-path', path.join(dir, 'Cargo.toml')], { stdio: 'inherit' })
  const file = path.join(dir, 'target', 'release', process.platform === 'darwin' ? 'libjs_thread_prototype.dylib' : 'libjs_thread_prototype.so')
  const addon = { exports: {} }
  process.dlopen(addon, file)
  return addon.exports
}

/** The prototype's four ways of running a statement; every answer is checked. */
async function prototypeRuns(e, sql) {
  const proto = loadPrototype()
  proto.connect(e.host, e.port, e.user, e.pass, e.name, sql)
  const check = (v) => {
    if (v !== 1) throw new Error(`the prototype answered ${v}`)
  }
  let kept = false
  const keep = (on) => {
    if (kept !== on) proto.stick(on)
    kept = on
  }
  return {
    'prototype: kept on the JS thread': async () => {
      keep(true)
      check(await proto.querySticky())
    },
    'prototype: to the JS thread per statement': async () => {
      keep(false)
      check(await proto.query())
    },
    'prototype: on a tokio worker': async () => {
      keep(false)
      check(await proto.queryWorker())
    },
    'prototype: alternating (2 statements)': async () => {
      keep(false)
      check(await proto.query())
      check(await proto.queryWorker())
    },
  }
}

;(async () => {
  const server = await startServer({ embedded: true })
  const e = server.endpoint
  const pg = require('pg')
  const { Pool } = require('..')
  const options = { host: e.host, port: e.port, user: e.user, password: e.pass, database: e.name }
  const sql = 'SELECT 1'

  const rawClient = new pg.Client(options)
  await rawClient.connect()
  await rawClient.query({ name: 'floor', text: sql })
  const pgClient = new pg.Client(options)
  await pgClient.connect()
  const pool = new Pool({ type: 'non-threaded', db: { ...e, id: 'floor' }, groups: { default: { connection_count: 1 } } })
  await pool.ready

  const runs = {
    ...(process.argv.includes('--prototype') ? await prototypeRuns(e, sql) : {}),
    'raw socket (floor)': rawLoop(rawClient, 'floor'),
    'pg.Client': () => pgClient.query(sql),
    pgdbpool: () => pool.query(sql),
  }
  const results = Object.fromEntries(Object.keys(runs).map((k) => [k, []]))
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, run] of Object.entries(runs)) results[name].push(await measure(run))
  }
  const floor = median(results['raw socket (floor)'].map((r) => r.qps))
  console.log(`\`${sql}\` at concurrency 1, ${N} round trips a round, median of ${ROUNDS} rounds:\n`)
  console.log('| client | q/s | p50 µs | CPU µs/q | ÷ floor |')
  console.log('|---|---|---|---|---|')
  for (const [name, rounds] of Object.entries(results)) {
    const qps = median(rounds.map((r) => r.qps))
    console.log(
      `| ${name} | ${Math.round(qps)} | ${median(rounds.map((r) => r.p50)).toFixed(0)} | ${median(rounds.map((r) => r.cpu)).toFixed(1)} | ${(qps / floor).toFixed(2)} |`,
    )
  }
  // pg reports the socket it no longer reads as lost; that is expected here.
  rawClient.on('error', () => {})
  rawClient.connection.stream.destroy()
  await pgClient.end()
  await pool.close()
  await server.destroy()
})().catch((e) => {
  console.error(e)
  process.exitCode = 1
})
