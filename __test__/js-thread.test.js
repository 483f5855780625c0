'use strict'
// The JS-thread fast path: a one-shot statement alone in its tick runs on the JS thread's own
// event loop, on a session taken over from the core's worker for the statement. It must return
// what the worker path returns, survive its session dying under it, and leave libuv's view of
// the process's other sockets alone.
const fs = require('node:fs')
const net = require('node:net')
const test = require('ava')

const { Pool, DBConnectionError } = require('..')
const binding = require('../binding.js')
const pg = require('pgdbpool/pg')
const { startServer, guardProcess, waitFor } = require('./helpers/pg')

guardProcess(test)

let server

test.before(async () => {
  server = await startServer()
})

test.after.always(async () => {
  if (server) await server.destroy()
})

function makePool(t, connections = 2) {
  const pool = new Pool({ type: 'non-threaded', db: { ...server.endpoint, id: 'js-thread' }, groups: { default: { connection_count: connections } } })
  t.teardown(() => pool.close().catch(() => {}))
  return pool
}

test('statements one at a time and in bursts get their own answers, and every session comes back', async (t) => {
  const pool = makePool(t)
  for (let round = 0; round < 20; round++) {
    // One at a time: each is alone in its tick.
    for (let i = 0; i < 50; i++) {
      const r = await pool.query('SELECT $1::int AS i, repeat($2, $1) AS s', [i, 'x'])
      if (r.rows[0].i !== i || r.rows[0].s.length !== i) t.fail(`statement ${i} got ${JSON.stringify(r.rows[0])}`)
    }
    // A burst next to one alone: they share the sessions the alone one takes over.
    const alone = pool.query('SELECT $1::int AS i', [-1])
    await Promise.resolve()
    const burst = await Promise.all(Array.from({ length: 30 }, (_, i) => pool.query('SELECT $1::int AS i', [i])))
    burst.forEach((r, i) => {
      if (r.rows[0].i !== i) t.fail(`burst statement ${i} got ${r.rows[0].i}`)
    })
    t.is((await alone).rows[0].i, -1)
  }
  const g = pool.stats().groups.default
  t.is(g.inUse, 0)
  t.true(g.size <= 2)
})

test.serial('a lone statement of a quiet pool runs on the event loop; under load none does', async (t) => {
  const pool = makePool(t, 4)
  await pool.query('SELECT 1')
  let before = binding.jsThreadStatements()
  for (let i = 0; i < 50; i++) await pool.query('SELECT $1::int AS i', [i])
  t.true(binding.jsThreadStatements() - before >= 45, 'one at a time, statements take the fast path')

  // 32 callers, each awaiting its statements one after another: every tick's submissions have
  // others in flight, so they all go to the worker, even a tick with a single statement in it.
  let stop = false
  let answered = 0
  const callers = Array.from({ length: 32 }, async (_, c) => {
    while (!stop) {
      const r = await pool.query('SELECT $1::int AS c', [c])
      if (r.rows[0].c !== c) t.fail(`caller ${c} got ${r.rows[0].c}`)
      answered++
    }
  })
  await waitFor(() => answered >= 200, { ms: 20000, what: 'the callers to get going' })
  before = binding.jsThreadStatements()
  const start = answered
  await waitFor(() => answered - start >= 2000, { ms: 30000, what: '2000 statements under load' })
  const onLoop = binding.jsThreadStatements() - before
  stop = true
  await Promise.all(callers)
  t.is(onLoop, 0, `${onLoop} of ${answered - start} statements under load ran on the event loop`)
})

test.serial("pgdbpool/pg's one-shot queries (what the ORMs send) take the fast path too, with pg's result shapes", async (t) => {
  const pool = new pg.Pool({ ...server.clientConfig(), max: 2 })
  t.teardown(() => pool.end().catch(() => {}))
  await pool.query('SELECT 1')
  const before = binding.jsThreadStatements()
  for (let i = 0; i < 50; i++) {
    const r = await pool.query({ text: 'SELECT $1::int AS i, $2::text AS s', values: [i, `v${i}`], rowMode: i % 2 ? 'array' : undefined })
    const expected = i % 2 ? [[i, `v${i}`]] : [{ i, s: `v${i}` }]
    if (JSON.stringify(r.rows) !== JSON.stringify(expected)) t.fail(`query ${i} got ${JSON.stringify(r.rows)}`)
  }
  t.true(binding.jsThreadStatements() - before >= 45, 'one at a time, they run on the event loop')
})

test('a session killed on the server under a statement fails that statement only; the next ones work', async (t) => {
  const pool = makePool(t, 1)
  const pid = (await pool.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
  const sleeping = pool.query('SELECT pg_sleep(5)').then(
    () => null,
    (e) => e,
  )
  await waitFor(async () => (await server.sql('SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = $1', ['SELECT pg_sleep(5)'])).rows[0].n === 1, {
    ms: 10000,
    what: 'the sleep to run',
  })
  await server.sql('SELECT pg_terminate_backend($1)', [pid])
  const error = await sleeping
  t.truthy(error, 'the statement on the killed session failed')
  t.true(error instanceof DBConnectionError || error.sqlState === '57P01', `${error.name}: ${error.message}`)
  for (let i = 0; i < 20; i++) t.is((await pool.query('SELECT $1::int AS i', [i])).rows[0].i, i)
  t.is(pool.stats().groups.default.inUse, 0)
})

/** The TCP state (as in /proc/net/tcp, '01' established, '08' close-wait) of this host's
 * socket from local port `port` to the test server, or null when there is none. */
function clientSocketState(port) {
  const hex = (n) => n.toString(16).toUpperCase().padStart(4, '0')
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    if (!fs.existsSync(file)) continue
    for (const line of fs.readFileSync(file, 'utf8').split('\n').slice(1)) {
      const [, local, remote, state] = line.trim().split(/\s+/)
      if (local?.endsWith(`:${hex(port)}`) && remote?.endsWith(`:${hex(server.endpoint.port)}`)) return state
    }
  }
  return null
}

test.serial(
  'a session killed on the server while it sits idle after statements on the JS thread: its socket is closed without a statement or a probe',
  async (t) => {
    // The session's socket is out of tokio's reactor while the JS thread's loop drives it; idle,
    // only that loop watches it, and must hand the server's close to the worker, which closes
    // the socket (the monitor probes once a minute here, so it is not what notices). Serial: with
    // other statements of this thread in flight, the pool's go to the worker, and its session
    // stays in tokio's reactor.
    if (!fs.existsSync('/proc/net/tcp')) return t.pass('no /proc/net/tcp here')
    const pool = new Pool({
      type: 'non-threaded',
      health_interval: 60000,
      db: { ...server.endpoint, id: 'js-thread-idle' },
      groups: { default: { connection_count: 1 } },
    })
    t.teardown(() => pool.close().catch(() => {}))
    for (let i = 0; i < 20; i++) await pool.query('SELECT 1')
    const { pid, port } = (await pool.query('SELECT pid, client_port AS port FROM pg_stat_activity WHERE pid = pg_backend_pid()')).rows[0]
    t.is(clientSocketState(port), '01', 'the session is connected')
    await server.sql('SELECT pg_terminate_backend($1)', [pid])
    // Established, then close-wait until the pool closes its end.
    await waitFor(() => !['01', '08'].includes(clientSocketState(port)), { ms: 5000, what: "the pool to close the killed session's socket" })
    for (let i = 0; i < 5; i++) t.is((await pool.query('SELECT $1::int AS i', [i])).rows[0].i, i)
  },
)

test("closed sessions' descriptors reused by the process's own sockets: those sockets keep working", async (t) => {
  // Sessions that took the fast path end; Node's own sockets get their descriptors; then more
  // statements take the fast path. A stale libuv handle for an old descriptor would take the
  // new socket out of the event loop's epoll set, and the echo below would never come back.
  for (let round = 0; round < 3; round++) {
    const first = makePool(t)
    for (let i = 0; i < 20; i++) await first.query('SELECT 1')
    await first.close()
    const echo = net.createServer((socket) => socket.pipe(socket))
    await new Promise((resolve) => echo.listen(0, '127.0.0.1', resolve))
    const clients = await Promise.all(
      Array.from(
        { length: 4 },
        () =>
          new Promise((resolve, reject) =>
            net
              .connect(echo.address().port, '127.0.0.1')
              .once('connect', function () {
                resolve(this)
              })
              .once('error', reject),
          ),
      ),
    )
    const second = makePool(t)
    for (let i = 0; i < 20; i++) await second.query('SELECT 1')
    const echoed = await Promise.all(
      clients.map(
        (c, i) =>
          new Promise((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`socket ${i} got no echo`)), 5000)
            c.once('data', (d) => {
              clearTimeout(timer)
              resolve(d.toString())
            })
            c.write(`ping ${i}`)
          }),
      ),
    )
    t.deepEqual(
      echoed,
      clients.map((_, i) => `ping ${i}`),
    )
    for (const c of clients) c.destroy()
    await new Promise((resolve) => echo.close(resolve))
    await second.close()
  }
})
