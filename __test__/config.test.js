'use strict'
const test = require('ava')
const { inspect } = require('node:util')

const { Pool, init, ConfigError, Handler, PoolClosedError, close } = require('..')
const { guardProcess } = require('./helpers/pg')

guardProcess(test)

const endpoint = { host: '127.0.0.1', port: 1, name: 'db', user: 'u', pass: 'hunter2-secret' }
const base = () => ({ type: 'non-threaded', db: endpoint, groups: { default: { connection_count: 2 } } })

function configError(t, mutate, path, pattern) {
  const config = base()
  mutate(config)
  const err = t.throws(() => new Pool(config), { instanceOf: ConfigError })
  t.is(err.code, 'CONFIG')
  t.is(err.path, path)
  t.true(err.message.startsWith(`${path}: `), err.message)
  if (pattern) t.regex(err.message, pattern)
  t.false(err.message.includes('hunter2-secret'))
}

test('unknown top-level key', (t) => configError(t, (c) => (c.dbs = []), 'dbs', /unknown key/))
test('unknown endpoint key', (t) => configError(t, (c) => (c.db = { ...endpoint, hots: 'x' }), 'db.hots', /unknown key/))
test('unknown group key', (t) => configError(t, (c) => (c.groups.default.conection_count = 1), 'groups.default.conection_count', /unknown key/))
test('wrong type of port', (t) => configError(t, (c) => (c.db = { ...endpoint, port: '5432' }), 'db.port', /integer/))
test('connection_count 0', (t) => configError(t, (c) => (c.groups.default.connection_count = 0), 'groups.default.connection_count', />= 1/))
test('connection_count missing', (t) => configError(t, (c) => delete c.groups.default.connection_count, 'groups.default.connection_count', /required/))
test('empty db list', (t) => configError(t, (c) => (c.db = []), 'db', /at least one/))
test('missing db', (t) => configError(t, (c) => delete c.db, 'db', /required/))
test('bad type', (t) => configError(t, (c) => (c.type = 'forked'), 'type', /'threaded', 'non-threaded'/))
test('bad ssl mode', (t) => configError(t, (c) => (c.db = { ...endpoint, ssl: 'yes' }), 'db.ssl', /'verify-full'/))
test('unreadable ssl_ca', (t) => configError(t, (c) => (c.db = { ...endpoint, ssl: 'verify-full', ssl_ca: '/nonexistent/ca.pem' }), 'db.ssl_ca', /cannot read/))
test('group naming a missing endpoint', (t) =>
  configError(t, (c) => (c.groups.default.endpoints = ['nope']), 'groups.default.endpoints[0]', /names no configured endpoint: "nope"/))
test('bad endpoint in a list names its index', (t) =>
  configError(t, (c) => (c.db = [endpoint, { ...endpoint, id: 'b', user: '' }]), 'db[1].user', /non-empty string/))
test('duplicate endpoint ids', (t) => configError(t, (c) => (c.db = [endpoint, endpoint]), 'db[1].id', /duplicate/))
test('bad balance', (t) => configError(t, (c) => (c.groups.default.balance = 'fastest'), 'groups.default.balance', /round-robin/))
test('bad target_session_attrs', (t) =>
  configError(t, (c) => (c.groups.default.target_session_attrs = 'master'), 'groups.default.target_session_attrs', /read-write/))
test('negative max_uses', (t) => configError(t, (c) => (c.groups.default.max_uses = -1), 'groups.default.max_uses', /integer >= 0/))
test('fractional max_uses', (t) => configError(t, (c) => (c.groups.default.max_uses = 1.5), 'groups.default.max_uses', /integer >= 0/))
test('min_idle above connection_count', (t) => configError(t, (c) => (c.groups.default.min_idle = 3), 'groups.default.min_idle', /<= connection_count/))
test('no groups', (t) => configError(t, (c) => (c.groups = {}), 'groups', /at least one group/))
test('bad URL does not echo the password', (t) => configError(t, (c) => (c.db = 'postgres://u:hunter2-secret@exa mple/db'), 'db', /valid postgres:\/\/ URL/))
test('URL with unsupported parameter', (t) =>
  configError(t, (c) => (c.db = 'postgres://u:hunter2-secret@localhost/db?foo=1'), 'db?foo', /unsupported URL parameter/))
test('bad int8 type option', (t) => configError(t, (c) => (c.types = { int8: 'long' }), 'types.int8', /'bigint'/))

test('init throws ConfigError synchronously', (t) => {
  t.throws(() => init({ db: endpoint, groups: { g: { connection_count: -1 } } }), { instanceOf: ConfigError, message: /groups\.g\.connection_count/ })
})

test('the config object is never mutated', async (t) => {
  const config = { type: 'non-threaded', db: [endpoint], groups: { default: { connection_count: 1, acquire_timeout: 50 } } }
  const snapshot = JSON.parse(JSON.stringify(config))
  const pool = new Pool(config)
  await pool.ready.catch(() => {})
  t.deepEqual(config, snapshot)
  await pool.close()
})

test('passwords never appear in inspect output', async (t) => {
  const pool = new Pool(base())
  const text = inspect(pool, { depth: 10, showHidden: true }) + inspect(pool.handler('default'), { depth: 10, showHidden: true })
  t.false(text.includes('hunter2-secret'), text)
  t.regex(text, /127\.0\.0\.1:1/)
  await pool.ready.catch(() => {})
  t.false(JSON.stringify(pool.stats()).includes('hunter2-secret'))
  await pool.close()
})

test('a Handler before init fails with a clear error', async (t) => {
  await close()
  t.throws(() => new Handler('default'), { instanceOf: PoolClosedError, message: /call init\(config\) first/ })
})
