'use strict'
// pgdbpool/pg against node-postgres itself: the same statements through both, on the same
// server, must give the same results, fields, errors and type-parser inputs; plus what a
// drop-in must do besides (query forms, events, release(true), LISTEN/NOTIFY, cursors).
const test = require('ava')

const pg = require('pgdbpool/pg')
const realPg = require('pg')
const { Pool: PgDbPool } = require('..')
const { startServer, waitFor, guardProcess } = require('./helpers/pg')

guardProcess(test)

let server
const pools = []

test.before(async () => {
  server = await startServer()
  await server.sql(
    'CREATE TABLE pgb_items (id serial PRIMARY KEY, name text UNIQUE NOT NULL, qty int, price numeric(10,2), at timestamptz, doc jsonb, tags text[])',
  )
  await server.sql(
    "INSERT INTO pgb_items (name, qty, price, at, doc, tags) VALUES ('a', 1, 1.50, '2020-01-02 03:04:05.678+00', '{\"k\": [1, 2]}', '{x,y}'), ('b', NULL, 2.25, NULL, NULL, '{}')",
  )
})

test.after.always(async () => {
  for (const p of pools) await p.end().catch(() => {})
  if (server) await server.destroy()
})

/** A pgdbpool/pg pool and a real pg pool on the same server, UTC sessions for both. */
function pair(extra = {}) {
  const config = { ...server.clientConfig(), options: '-c TimeZone=UTC', ...extra }
  const ours = new pg.Pool(config)
  const theirs = new realPg.Pool(config)
  // pg's pool.end() resolves before its sockets are closed; a server stopped right after makes
  // their idle clients emit 'error', which pg.Pool throws without a listener.
  theirs.on('error', () => {})
  pools.push(ours, theirs)
  return { ours, theirs }
}

/** Resolves with the first `event` of `emitter`, or rejects after `ms`. */
function next(emitter, event, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no '${event}' within ${ms} ms`)), ms)
    emitter.once(event, (...args) => {
      clearTimeout(timer)
      resolve(args.length > 1 ? args : args[0])
    })
  })
}

/** What a result says, without the parts pg keeps private. */
function shape(r) {
  if (Array.isArray(r)) return r.map(shape)
  return { command: r.command, rowCount: r.rowCount, oid: r.oid, rows: r.rows, fields: r.fields.map((f) => ({ ...f })) }
}

test('the module: pg names, the same type registry and DatabaseError as pg, instanceof pg.Pool, ESM', async (t) => {
  for (const name of ['Pool', 'Client', 'types', 'defaults', 'DatabaseError', 'escapeIdentifier', 'escapeLiteral', 'Cursor']) t.truthy(pg[name], name)
  t.is(pg.native, undefined)
  t.is(pg.types, realPg.types)
  t.is(pg.defaults, realPg.defaults)
  t.is(pg.DatabaseError, realPg.DatabaseError)
  const pool = new pg.Pool({ ...server.clientConfig() })
  pools.push(pool)
  t.true(pool instanceof realPg.Pool)
  t.true(pool instanceof require('node:events').EventEmitter)
  t.true(Object.getPrototypeOf(pool).constructor.name.includes('Pool'))
  t.false(Object.keys(pool.options).includes('password'))
  t.is(pool.options.password, server.clientConfig().password)
  const esm = await import('pgdbpool/pg')
  t.is(esm.Pool, pg.Pool)
  t.is(esm.default.Pool, pg.Pool)
  for (const s of ['plain', "it's", 'back\\slash', 'quote"d', '', "mixed \\ and '"]) {
    t.is(pg.escapeIdentifier(s), realPg.Client.prototype.escapeIdentifier(s))
    t.is(pg.escapeLiteral(s), realPg.Client.prototype.escapeLiteral(s))
  }
})

test('results as pg gives them: rows, fields, command, rowCount, oid; rowMode array; parameters', async (t) => {
  const { ours, theirs } = pair()
  const cases = [
    ['SELECT * FROM pgb_items ORDER BY id'],
    ['SELECT id, name FROM pgb_items WHERE qty = $1', [1]],
    [
      'SELECT $1::int AS a, $2::text AS b, $3::jsonb AS c, $4::timestamptz AS d, $5::text[] AS e, $6::bytea AS f',
      [7, 'x', { a: [1] }, new Date(1_600_000_000_123), ['p', 'q "r"', null], Buffer.from([1, 2, 3])],
    ],
    ["SELECT 1::int8 AS big, 1.5::float4 AS f4, 2.5::float8 AS f8, true AS b, NULL::int AS n, '2020-02-03'::date AS d, interval '1 day 2 hours' AS i"],
    [{ text: 'SELECT name, qty FROM pgb_items ORDER BY id', rowMode: 'array' }],
    ["UPDATE pgb_items SET qty = qty WHERE name = 'a'"],
    ["INSERT INTO pgb_items (name) VALUES ('a') ON CONFLICT DO NOTHING"],
    ["DELETE FROM pgb_items WHERE name = 'nobody'"],
    ['WITH x AS (SELECT 1 AS v) SELECT v FROM x'],
    ["SELECT 'x'::name AS nm, '{a,b}'::name[] AS nms, 42::regclass::oid AS o, 'abc'::bpchar(5) AS ch, '1 2'::int2vector AS v"],
    ['CREATE TEMP TABLE IF NOT EXISTS pgb_tmp (a int)'],
    ['SHOW TimeZone'],
    ["SELECT 1 AS x, 'two' AS x"],
  ]
  for (const [text, values] of cases) {
    const a = await ours.query(text, values)
    const b = await theirs.query(text, values)
    t.deepEqual(shape(a), shape(b), JSON.stringify(text))
  }
})

test("a text without values is a simple query: several statements give pg's array of results", async (t) => {
  const { ours, theirs } = pair()
  const script =
    "SELECT 1 AS a; SELECT name, tags, at FROM pgb_items ORDER BY id; UPDATE pgb_items SET qty = qty WHERE false; SET LOCAL work_mem = '8MB'; SELECT NULL::int AS n"
  const a = await ours.query(script)
  const b = await theirs.query(script)
  t.true(Array.isArray(a))
  t.is(a.length, 5)
  t.deepEqual(shape(a), shape(b))
  const client = await ours.connect()
  try {
    const r = await client.query('LISTEN pgb_a; LISTEN pgb_b')
    t.deepEqual(
      r.map((x) => x.command),
      ['LISTEN', 'LISTEN'],
    )
    const one = await client.query('SELECT 42 AS answer')
    t.false(Array.isArray(one))
    await t.throwsAsync(client.query('SELECT 1; SELECT $1::int', [1]), { instanceOf: pg.DatabaseError })
  } finally {
    client.release()
  }
})

test('every query form of pg: promise, callback, (text, cb), (text, values, cb), config with callback; submittable returns at once', async (t) => {
  const { ours } = pair()
  const viaCallback = (fn) => new Promise((resolve, reject) => fn((err, r) => (err ? reject(err) : resolve(r))))
  t.is((await ours.query('SELECT 1 AS a')).rows[0].a, 1)
  t.is((await viaCallback((cb) => ours.query('SELECT 2 AS a', cb))).rows[0].a, 2)
  t.is((await viaCallback((cb) => ours.query('SELECT $1::int AS a', [3], cb))).rows[0].a, 3)
  t.is((await viaCallback((cb) => ours.query({ text: 'SELECT $1::int AS a', values: [4], callback: cb }))).rows[0].a, 4)
  const client = await viaCallback((cb) => ours.connect((err, c, release) => cb(err, { c, release })))
  t.is(typeof client.release, 'function')
  t.is(client.c.release, client.release)
  t.is(
    ours.query('SELECT 1', () => {}),
    undefined,
  )
  t.is((await client.c.query({ text: 'SELECT $1::text AS a', values: ['x'], name: 'pgb-named' })).rows[0].a, 'x')
  t.is((await client.c.query({ text: 'SELECT $1::text AS a', values: ['y'], name: 'pgb-named' })).rows[0].a, 'y')
  t.is((await viaCallback((cb) => client.c.query('SELECT 5 AS a', cb))).rows[0].a, 5)
  const cursor = new pg.Cursor('SELECT generate_series(1, 10) AS n')
  t.is(client.c.query(cursor), cursor)
  t.deepEqual(
    (await cursor.read(4)).map((r) => r.n),
    [1, 2, 3, 4],
  )
  await cursor.close()
  client.release()
})

test('queries on one client run in submission order, as pg@8 queues them', async (t) => {
  const { ours } = pair()
  const client = await ours.connect()
  const seen = []
  const all = []
  for (let i = 0; i < 50; i++) all.push(client.query('SELECT $1::int AS i, pg_sleep(0)', [i]).then((r) => seen.push(r.rows[0].i)))
  await Promise.all(all)
  t.deepEqual(
    seen,
    Array.from({ length: 50 }, (_, i) => i),
  )
  client.release()
})

test('server errors are pg DatabaseErrors with SQLSTATE code and every field pg gives', async (t) => {
  const { ours, theirs } = pair()
  const grab = (p) =>
    p.then(
      () => null,
      (e) => e,
    )
  const a = await grab(ours.query("INSERT INTO pgb_items (name) VALUES ('a')"))
  const b = await grab(theirs.query("INSERT INTO pgb_items (name) VALUES ('a')"))
  t.true(a instanceof pg.DatabaseError)
  t.is(a.code, '23505')
  for (const key of ['message', 'severity', 'code', 'detail', 'schema', 'table', 'constraint', 'name']) t.is(a[key], b[key], key)
  const c = await grab(ours.query('SELEC 1'))
  const d = await grab(theirs.query('SELEC 1'))
  for (const key of ['message', 'code', 'position', 'severity']) t.is(c[key], d[key], key)
  const e = await grab(ours.query('SELECT $1::int', ['nope']))
  t.is(e.code, '22P02')
  await t.throwsAsync(ours.query('SELECT 1', 'not-an-array'), { message: 'Query values must be an array' })
})

test.serial("type parsers: pg's text for the parser, query > client > global, stock parsers stay fast", async (t) => {
  const { ours, theirs } = pair()
  const text =
    "SELECT 1::int4 AS i, 2::int8 AS b, true AS t, 1.25::float8 AS f, 3.50::numeric AS n, '2020-01-02'::date AS d, '2020-01-02 03:04:05.5'::timestamp AS ts, '2020-01-02 03:04:05.5+00'::timestamptz AS tz, '\\x0102'::bytea AS y, '{\"a\":1}'::json AS j, '{\"a\": 1}'::jsonb AS jb, ARRAY[1,2] AS arr, interval '1 day' AS iv"
  const recordAll = (seen) => ({
    getTypeParser: (oid) => (v) => {
      seen.push([oid, v])
      return v
    },
  })
  const a = []
  const b = []
  await ours.query({ text, types: recordAll(a) })
  await theirs.query({ text, types: recordAll(b) })
  t.deepEqual(a, b)

  const client = await ours.connect()
  try {
    const original = pg.types.getTypeParser(20)
    pg.types.setTypeParser(20, (v) => BigInt(v))
    try {
      t.is((await client.query('SELECT 9007199254740993::int8 AS v')).rows[0].v, 9007199254740993n)
      t.is((await ours.query('SELECT 7::int8 AS v')).rows[0].v, 7n)
      client.setTypeParser(20, (v) => `client:${v}`)
      t.is((await client.query('SELECT 8::int8 AS v')).rows[0].v, 'client:8')
      const r = await client.query({ text: 'SELECT 9::int8 AS v', types: { getTypeParser: () => (v) => `query:${v}` } })
      t.is(r.rows[0].v, 'query:9')
    } finally {
      pg.types.setTypeParser(20, original)
    }
    t.is((await ours.query('SELECT 10::int8 AS v')).rows[0].v, '10')
  } finally {
    client.release()
  }
  // defaults.parseInt8 is pg's setting (shared): int8 as number.
  pg.defaults.parseInt8 = true
  try {
    t.is((await ours.query('SELECT 11::int8 AS v')).rows[0].v, 11)
  } finally {
    pg.defaults.parseInt8 = false
  }
  t.is((await ours.query('SELECT 12::int8 AS v')).rows[0].v, '12')
})

test('transactions on a client: commit, rollback, savepoints; COMMIT of a failed transaction answers ROLLBACK as the server does', async (t) => {
  const { ours } = pair()
  await ours.query('CREATE TABLE IF NOT EXISTS pgb_tx (n int)')
  const client = await ours.connect()
  try {
    await client.query('BEGIN')
    t.true(client.inTransaction)
    await client.query('INSERT INTO pgb_tx VALUES (1)')
    await client.query('SAVEPOINT s1')
    await client.query('INSERT INTO pgb_tx VALUES (2)')
    await client.query('ROLLBACK TO SAVEPOINT s1')
    t.is((await client.query('COMMIT')).command, 'COMMIT')
    await client.query('BEGIN')
    await client.query('INSERT INTO pgb_tx VALUES (3)')
    await t.throwsAsync(client.query('SELECT 1/0'), { instanceOf: pg.DatabaseError })
    const commit = await client.query('COMMIT')
    t.is(commit.command, 'ROLLBACK')
    t.false(client.inTransaction)
  } finally {
    client.release()
  }
  t.deepEqual((await ours.query('SELECT n FROM pgb_tx ORDER BY n')).rows, [{ n: 1 }])
})

test('pool events, one client object per connection, release(true) destroys the connection', async (t) => {
  const { ours } = pair({ max: 2 })
  const events = []
  ours.on('connect', () => events.push('connect'))
  ours.on('acquire', () => events.push('acquire'))
  ours.on('release', (err) => events.push(err ? 'release(err)' : 'release'))
  ours.on('remove', () => events.push('remove'))
  const first = await ours.connect()
  const pid = first.processID
  t.is((await first.query('SELECT pg_backend_pid() AS p')).rows[0].p, pid)
  first.release()
  t.throws(() => first.release(), { message: /already been released/ })
  const again = await ours.connect()
  t.is(again, first)
  t.is(again.processID, pid)
  again.release(new Error('broken'))
  await waitFor(async () => (await server.sql('SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1', [pid])).rows[0].n === 0, {
    what: 'the destroyed connection to close',
  })
  const third = await ours.connect()
  t.not(third.processID, pid)
  third.release()
  t.deepEqual(events, ['connect', 'acquire', 'release', 'acquire', 'release(err)', 'remove', 'connect', 'acquire', 'release'])
  t.true(ours.totalCount >= 1)
  t.is(ours.waitingCount, 0)
})

test('a standalone Client: connect, processID, notices, notifications, end', async (t) => {
  const client = new pg.Client({ ...server.clientConfig() })
  await client.connect()
  t.is((await client.query('SELECT pg_backend_pid() AS p')).rows[0].p, client.processID)
  await t.throwsAsync(client.connect(), { message: /already been connected/ })
  const notice = next(client, 'notice')
  await client.query("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$")
  const n = await notice
  t.is(n.message, 'hello 42')
  t.is(n.severity, 'NOTICE')
  await client.query('LISTEN pgb_chan')
  const note = next(client, 'notification')
  await server.sql("SELECT pg_notify('pgb_chan', 'payload-1')")
  const got = await note
  t.is(got.channel, 'pgb_chan')
  t.is(got.payload, 'payload-1')
  t.is(typeof got.processId, 'number')
  const ended = next(client, 'end')
  await client.end()
  await ended
  await t.throwsAsync(client.query('SELECT 1'), { message: 'Client was closed and is not queryable' })
})

test("a checked-out connection that dies: the query fails with pg's message, the client emits error and end", async (t) => {
  const { ours } = pair()
  const client = await ours.connect()
  const error = next(client, 'error')
  const end = next(client, 'end')
  await server.sql('SELECT pg_terminate_backend($1)', [client.processID])
  t.is((await error).message, 'Connection terminated unexpectedly')
  await end
  const e = await client.query('SELECT 1').then(
    () => null,
    (err) => err,
  )
  t.truthy(e)
  client.release(e)
  t.is((await ours.query('SELECT 1 AS a')).rows[0].a, 1)
})

test("a Cursor reads a large result in batches (Kysely's streaming contract)", async (t) => {
  const { ours } = pair()
  const client = await ours.connect()
  try {
    const cursor = client.query(new pg.Cursor('SELECT n, md5(n::text) AS h FROM generate_series(1, 25000) AS n WHERE n > $1', [0]))
    const later = client.query('SELECT 1 AS after')
    let total = 0
    let last = 0
    for (;;) {
      const rows = await cursor.read(1000)
      if (rows.length === 0) break
      t.true(rows.length <= 1000)
      for (const r of rows) t.is(r.n, ++last)
      total += rows.length
    }
    await cursor.close()
    t.is(total, 25000)
    t.is((await later).rows[0].after, 1)
    t.false(client.inTransaction)
  } finally {
    client.release()
  }
})

test('pool.listen: notifications, LISTEN again after the connection is killed (onListen says so), close', async (t) => {
  const { ours } = pair()
  const payloads = []
  const listens = []
  let wake = () => {}
  const listener = await ours.listen(
    'pgb_jobs',
    (payload) => {
      payloads.push(payload)
      wake()
    },
    (info) => listens.push(info.reconnected),
  )
  const arrived = (n) =>
    payloads.length >= n
      ? Promise.resolve()
      : new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`only ${payloads.length} of ${n} notifications`)), 5000)
          wake = () => {
            if (payloads.length >= n) {
              clearTimeout(timer)
              resolve()
            }
          }
        })
  t.deepEqual(listens, [false])
  await server.sql("NOTIFY pgb_jobs, 'one'")
  await arrived(1)
  // The listening session's last statement is its LISTEN (the heartbeat comes every 10 s).
  const pids = await server.sql('SELECT pid FROM pg_stat_activity WHERE query = $1', ['LISTEN "pgb_jobs"'])
  t.is(pids.rows.length, 1)
  await server.sql('SELECT pg_terminate_backend($1)', [pids.rows[0].pid])
  await waitFor(() => listens.length === 2, { what: 'the listener to LISTEN again', ms: 15000 })
  t.deepEqual(listens, [false, true])
  await server.sql("NOTIFY pgb_jobs, 'two'")
  await arrived(2)
  t.deepEqual(payloads, ['one', 'two'])
  await listener.close()
})

test("wrapping a pgdbpool Pool and group: the ORM keeps the pool's endpoints and groups", async (t) => {
  const base = new PgDbPool({
    type: 'non-threaded',
    db: { ...server.endpoint, application_name: 'pgb-wrap' },
    groups: { default: { connection_count: 2 }, write: { connection_count: 1, autocommit: true } },
  })
  const ours = new pg.Pool({ pool: base, group: 'write' })
  try {
    t.true(ours instanceof realPg.Pool)
    const r = await ours.query("SELECT current_setting('application_name') AS app")
    t.is(r.rows[0].app, 'pgb-wrap')
    const client = await ours.connect()
    const other = ours.connect()
    let settled = false
    other.then(
      () => (settled = true),
      () => (settled = true),
    )
    await new Promise((resolve) => setImmediate(resolve))
    t.false(settled, 'the write group has one connection')
    client.release()
    ;(await other).release()
    // A Client from the pool's options uses the same pool and group (Kysely's control client).
    const control = new ours.Client(ours.options)
    await control.connect()
    t.is((await control.query('SELECT 1 AS a')).rows[0].a, 1)
    await control.end()
    await ours.end()
    t.is((await base.query('SELECT 2 AS b')).rows[0].b, 2, 'ending the wrapper leaves the pgdbpool pool open')
  } finally {
    await base.close()
  }
})

test('pg settings reach the session: options, statement_timeout, application_name, a password function', async (t) => {
  const { password, ...rest } = server.clientConfig()
  const ours = new pg.Pool({
    ...rest,
    password: async () => password,
    application_name: 'pgb-app',
    statement_timeout: 1234,
    options: '-c search_path=pgb_schema,public',
    idle_in_transaction_session_timeout: 5000,
  })
  pools.push(ours)
  const r = await ours.query(
    "SELECT current_setting('application_name') AS app, current_setting('statement_timeout') AS st, current_setting('search_path') AS sp, current_setting('idle_in_transaction_session_timeout') AS it",
  )
  t.deepEqual(r.rows[0], { app: 'pgb-app', st: '1234ms', sp: 'pgb_schema,public', it: '5s' })
  const bad = new pg.Pool({ ...rest, password: 'wrong', connectionTimeoutMillis: 3000 })
  pools.push(bad)
  await t.throwsAsync(bad.query('SELECT 1'))
})

test('a BEGIN goes out with the next statement: its isolation level holds, an empty transaction and a release without statements leave nothing open', async (t) => {
  const { ours } = pair({ max: 1 })
  const client = await ours.connect()
  try {
    const begin = await client.query('START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY')
    t.is(begin.command, 'BEGIN')
    t.true(client.inTransaction)
    t.is(client.getTransactionStatus(), 'T')
    const r = await client.query(
      "SELECT current_setting('transaction_isolation') AS iso, current_setting('transaction_read_only') AS ro, now() = statement_timestamp() AS fresh",
    )
    t.deepEqual(r.rows[0], { iso: 'serializable', ro: 'on', fresh: false })
    await t.throwsAsync(client.query('CREATE TEMP TABLE pgb_ro (a int)'), { code: '25006' })
    t.is((await client.query('ROLLBACK')).command, 'ROLLBACK')
    await client.query('BEGIN')
    t.is((await client.query('COMMIT')).command, 'COMMIT')
    t.false(client.inTransaction)
    await client.query('BEGIN')
  } finally {
    client.release()
  }
  // The same connection (max 1): the held-back BEGIN was never sent, nothing is open.
  const again = await ours.connect()
  try {
    t.is(again.getTransactionStatus(), 'I')
    const r = await again.query("SELECT current_setting('transaction_isolation') AS iso")
    t.is(r.rows[0].iso, 'read committed')
    t.false(again.inTransaction)
  } finally {
    again.release()
  }
})
