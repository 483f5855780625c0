'use strict'
// connect-pg-simple (express-session's PostgreSQL store) with `{ pool }` a pgdbpool/pg Pool, unpatched.
const test = require('ava')
const { promisify } = require('node:util')

const pg = require('pgdbpool/pg')
const session = require('express-session')
const PgStore = require('connect-pg-simple')(session)
const { startServer, guardProcess } = require('./helpers/pg')

guardProcess(test)

let server
let pool
let store

test.before(async () => {
  server = await startServer()
  pool = new pg.Pool({ ...server.clientConfig(), max: 3 })
  store = new PgStore({ pool, tableName: 'cps_sessions', createTableIfMissing: true, pruneSessionInterval: false })
})

test.after.always(async () => {
  if (store) await store.close()
  if (pool) await pool.end()
  if (server) await server.destroy()
})

const cookie = (ms) => ({ maxAge: ms, expires: new Date(Date.now() + ms), originalMaxAge: ms })

test.serial('sessions are created (with the table), read, touched, counted and destroyed', async (t) => {
  const set = promisify(store.set.bind(store))
  const get = promisify(store.get.bind(store))
  const touch = promisify(store.touch.bind(store))
  const destroy = promisify(store.destroy.bind(store))

  await set('sid-1', { cookie: cookie(60_000), user: { id: 7, name: 'ann' } })
  await set('sid-2', { cookie: cookie(60_000), user: { id: 8 } })
  t.deepEqual((await get('sid-1')).user, { id: 7, name: 'ann' })
  t.falsy(await get('nope'))
  await set('sid-1', { cookie: cookie(60_000), user: { id: 7, name: 'ann', visits: 2 } })
  t.is((await get('sid-1')).user.visits, 2)
  await touch('sid-1', { cookie: cookie(120_000) })
  t.is((await pool.query('SELECT count(*)::int AS n FROM cps_sessions')).rows[0].n, 2)
  await destroy('sid-2')
  t.falsy(await get('sid-2'))
  const expiry = await pool.query('SELECT expire FROM cps_sessions WHERE sid = $1', ['sid-1'])
  t.true(expiry.rows[0].expire instanceof Date)
  t.true(expiry.rows[0].expire.getTime() > Date.now() + 60_000)
})

test.serial('expired sessions are pruned', async (t) => {
  await promisify(store.set.bind(store))('sid-old', { cookie: cookie(-1000) })
  t.falsy(await promisify(store.get.bind(store))('sid-old'))
  await new Promise((resolve) => store.pruneSessions((err) => resolve(err)))
  const left = await pool.query('SELECT count(*)::int AS n FROM cps_sessions WHERE sid = $1', ['sid-old'])
  t.is(left.rows[0].n, 0)
})
