'use strict'
// Every configuration number has a range (README "Configuration"), checked at init with a
// ConfigError naming the key, for endpoint objects and URLs alike; and a fuzz of the whole
// validator (in a child process, so that an abort fails the test instead of the runner).
const test = require('ava')
const path = require('node:path')

const { Pool, ConfigError } = require('..')
const { guardProcess, freePort } = require('./helpers/pg')
const { runNode, jsonLines, assertCleanExit } = require('./helpers/child')

guardProcess(test)

const endpoint = { host: '127.0.0.1', port: 1, name: 'db', user: 'u', pass: 'hunter2-secret' }
const base = () => ({ type: 'non-threaded', db: { ...endpoint }, groups: { default: { connection_count: 2 } } })

function rejects(t, mutate, keyPath, pattern) {
  const config = base()
  mutate(config)
  let err
  try {
    const pool = new Pool(config)
    pool.ready.catch(() => {})
    pool.close({ timeout: 0 })
  } catch (e) {
    err = e
  }
  t.true(err instanceof ConfigError, `${keyPath}: expected a ConfigError, got ${err ? `${err.constructor.name}: ${err.message}` : 'a pool'}`)
  if (!(err instanceof ConfigError)) return
  t.is(err.path, keyPath, err.message)
  t.true(err.message.startsWith(`${keyPath}: `), err.message)
  if (pattern) t.regex(err.message, pattern)
  t.false(err.message.includes('hunter2-secret'))
}

function accepts(t, mutate) {
  const config = base()
  mutate(config)
  const pool = new Pool(config)
  pool.ready.catch(() => {})
  t.pass()
  return pool.close({ timeout: 0 })
}

// key, where, lowest, highest, integer. The documented ranges, written out here rather than
// taken from lib/config.ts's RANGES: the test checks the validator against the documentation,
// so a range changed by mistake in the code fails it. The next test checks that the lists agree
// on which keys have a range.
const RANGES = [
  ['port', 'db', 1, 65535, true],
  ['connect_timeout', 'db', 0.001, 2147483, false],
  ['query_timeout', 'db', 0, 2147483647, true],
  ['session_tmp_buffer', 'db', 1, 8388607, true],
  ['weight', 'db', 1, 1000000, true],
  ['connection_count', 'group', 1, 100000, true],
  ['acquire_timeout', 'group', 1, 2147483647, true],
  ['max_waiting', 'group', 0, 2147483647, true],
  ['idle_timeout', 'group', 0, 2147483647, true],
  ['max_lifetime', 'group', 0, 2147483647, true],
  ['max_uses', 'group', 0, Number.MAX_SAFE_INTEGER, true],
  ['ping_after_idle', 'group', 0, 2147483647, true],
  ['statement_cache_size', 'group', 0, 10000, true],
  ['pipeline', 'group', 1, 1000, true],
  ['leak_threshold', 'group', 0, 2147483647, true],
  ['health_interval', 'top', 10, 2147483647, true],
]

test('every number the validator checks has its range tested here', (t) => {
  const { RANGES: validated } = require('../dist/lib/config')
  t.deepEqual(RANGES.map(([key]) => key).sort(), Object.keys(validated).sort())
})

function setter(where, key, value) {
  return (c) => {
    if (where === 'db') c.db[key] = value
    else if (where === 'group') c.groups.default[key] = value
    else c[key] = value
  }
}

for (const [key, where, lo, hi, isInt] of RANGES) {
  const keyPath = where === 'db' ? `db.${key}` : where === 'group' ? `groups.default.${key}` : key
  test(`${keyPath} has a range: ${lo}..${hi}${isInt ? ', an integer' : ''}`, async (t) => {
    const bad = [1e20, -1e20, NaN, Infinity, -Infinity, lo - 1, hi + 1, '5', null, true, [], {}]
    if (isInt) bad.push(lo + 0.5)
    if (key === 'connect_timeout') bad.push(0)
    for (const value of bad) rejects(t, setter(where, key, value), keyPath, /must be/)
    const good = [lo, hi]
    if (key === 'connection_count') good.pop() // a huge pool is valid but not worth opening here
    for (const value of good)
      await accepts(t, (c) => {
        setter(where, key, value)(c)
        if (key === 'min_idle') c.groups.default.connection_count = Math.max(value, 1)
      })
  })
}

test('min_idle ranges from 0 to connection_count', (t) => {
  rejects(t, (c) => (c.groups.default.min_idle = -1), 'groups.default.min_idle', /must be/)
  rejects(t, (c) => (c.groups.default.min_idle = 0.5), 'groups.default.min_idle', /must be/)
  rejects(t, (c) => (c.groups.default.min_idle = 3), 'groups.default.min_idle', /connection_count/)
  rejects(t, (c) => (c.groups.default.min_idle = 1e20), 'groups.default.min_idle', /must be/)
})

test('endpoint indexes in groups.endpoints must be integers naming an endpoint', (t) => {
  for (const ref of [1e20, -1, 0.5, NaN, 2n, null, {}])
    rejects(t, (c) => (c.groups.default.endpoints = [ref]), 'groups.default.endpoints[0]', /names no configured endpoint/)
})

test('URL parameters have the same ranges, named by the key they set', (t) => {
  const url = (q) => `postgres://u:hunter2-secret@127.0.0.1:1/db?${q}`
  rejects(t, (c) => (c.db = url('connect_timeout=1e20')), 'db.connect_timeout', /must be/)
  rejects(t, (c) => (c.db = url('connect_timeout=abc')), 'db.connect_timeout', /must be/)
  rejects(t, (c) => (c.db = url('connect_timeout=-3')), 'db.connect_timeout', /must be/)
  rejects(t, (c) => (c.db = url('connect_timeout=')), 'db.connect_timeout', /must be/)
  rejects(t, (c) => (c.db = 'postgres://u:hunter2-secret@127.0.0.1:99999/db'), 'db', /valid postgres:\/\/ URL/)
})

test('a % in a URL that is not an escape is a ConfigError that does not echo the password', (t) => {
  rejects(t, (c) => (c.db = 'postgres://u:hunter2-secret%zz@127.0.0.1/db'), 'db', /%/)
  rejects(t, (c) => (c.db = 'postgres://u:hunter2-secret%@127.0.0.1/db'), 'db', /%/)
  rejects(t, (c) => (c.db = 'postgres://u%e0:hunter2-secret@127.0.0.1/db'), 'db', /%/)
  rejects(t, (c) => (c.db = 'postgres://u:hunter2-secret@127.0.0.1/d%b'), 'db', /%/)
  // A real escape still works.
  const pool = new Pool({ ...base(), db: 'postgres://u:p%40ss@127.0.0.1:1/db' })
  pool.ready.catch(() => {})
  t.notThrows(() => pool.close({ timeout: 0 }))
})

test('TLS as libpq: verify-ca without ssl_ca is refused; verify-full without it keeps the public roots', async (t) => {
  rejects(t, (c) => (c.db.ssl = 'verify-ca'), 'db.ssl_ca', /verify-ca/)
  rejects(t, (c) => (c.db = 'postgres://u:hunter2-secret@127.0.0.1:1/db?sslmode=verify-ca'), 'db.ssl_ca', /verify-ca/)
  // libpq's sslrootcert=system: the public roots, which only verify-full may use.
  rejects(t, (c) => (c.db = 'postgres://u:hunter2-secret@127.0.0.1:1/db?sslmode=verify-ca&sslrootcert=system'), 'db.ssl_ca', /system/)
  await accepts(t, (c) => (c.db.ssl = 'verify-full'))
  await accepts(t, (c) => (c.db = 'postgres://u:hunter2-secret@127.0.0.1:1/db?sslmode=verify-full&sslrootcert=system'))
  await accepts(t, (c) => (c.db = 'postgres://u:hunter2-secret@127.0.0.1:1/db?sslrootcert=system'))
  await accepts(t, (c) => Object.assign(c.db, { ssl: 'verify-full', ssl_ca: 'system' }))
})

test('fuzz: random values of every type for every key only ever give a ConfigError or a pool, never another throw or an abort', async (t) => {
  const port = await freePort()
  for (const seed of [1, 2, 3]) {
    const result = await runNode(path.join(__dirname, 'helpers', 'config-fuzz-child.js'), [String(seed), '1500', String(port)], { timeout: 90000 })
    assertCleanExit(t, result, `fuzz seed ${seed}`)
    const [report] = jsonLines(result.stdout)
    t.truthy(report, result.stdout)
    if (!report) continue
    t.deepEqual(report.bad, [], `seed ${seed}`)
    t.true(report.configErrors > 100 && report.pools > 100, JSON.stringify({ configErrors: report.configErrors, pools: report.pools }))
  }
})
