'use strict'
// The three pools under test, each behind the same small interface, configured alike:
// same server, same pool size.

const { POOL_SIZE, randomId, pgPoolOptions, postgresOptions } = require('./clients')

const SQL = {
  select1: 'SELECT 1',
  lookup: 'SELECT id, name, qty FROM bench_items WHERE id = $1',
  rows100: 'SELECT id, name, qty, price, at, tags, doc FROM bench_items WHERE id <= 100',
  rows10k: 'SELECT id, name, qty, price, at, tags, doc FROM bench_items',
  txRead: 'SELECT qty FROM bench_items WHERE id = $1',
  txWrite: 'UPDATE bench_counters SET n = n + 1 WHERE id = $1',
}

async function pgdbpool(endpoint) {
  const { Pool } = require('..')
  const pool = new Pool({
    type: 'threaded',
    db: { ...endpoint, application_name: 'bench-pgdbpool' },
    groups: {
      default: { connection_count: POOL_SIZE, acquire_timeout: 120000, max_waiting: 100000 },
      tx: { connection_count: POOL_SIZE, autocommit: false, acquire_timeout: 120000, max_waiting: 100000 },
    },
  })
  await pool.ready
  return {
    name: 'pgdbpool',
    async checkout() {
      const db = pool.handler()
      await db.acquire()
      await db.release()
    },
    select1: () => pool.query(SQL.select1),
    lookup: () => pool.query(SQL.lookup, [randomId()]),
    rows100: () => pool.query(SQL.rows100),
    rows10k: () => pool.query(SQL.rows10k),
    async tx() {
      const db = pool.handler('tx')
      try {
        const id = randomId()
        await db.query(SQL.txRead, [id])
        await db.query(SQL.txWrite, [id % 100])
        await db.query(SQL.txRead, [id])
        await db.commit()
      } finally {
        await db.release()
      }
    },
    close: () => pool.close(),
  }
}

async function pg(endpoint) {
  const { Pool } = require('pg')
  const pool = new Pool(pgPoolOptions(endpoint, 'bench-pg'))
  pool.on('error', () => {})
  return {
    name: 'pg',
    async checkout() {
      const c = await pool.connect()
      c.release()
    },
    select1: () => pool.query(SQL.select1),
    lookup: () => pool.query(SQL.lookup, [randomId()]),
    rows100: () => pool.query(SQL.rows100),
    rows10k: () => pool.query(SQL.rows10k),
    async tx() {
      const c = await pool.connect()
      try {
        const id = randomId()
        await c.query('BEGIN')
        await c.query(SQL.txRead, [id])
        await c.query(SQL.txWrite, [id % 100])
        await c.query(SQL.txRead, [id])
        await c.query('COMMIT')
      } catch (e) {
        await c.query('ROLLBACK').catch(() => {})
        throw e
      } finally {
        c.release()
      }
    },
    close: () => pool.end(),
  }
}

async function postgresjs(endpoint) {
  const postgres = require('postgres')
  const sql = postgres(postgresOptions(endpoint, 'bench-postgresjs'))
  return {
    name: 'postgres.js',
    async checkout() {
      const r = await sql.reserve()
      r.release()
    },
    select1: () => sql.unsafe(SQL.select1, [], { prepare: true }),
    lookup: () => sql.unsafe(SQL.lookup, [randomId()], { prepare: true }),
    rows100: () => sql.unsafe(SQL.rows100, [], { prepare: true }),
    rows10k: () => sql.unsafe(SQL.rows10k, [], { prepare: true }),
    tx: () =>
      sql.begin(async (t) => {
        const id = randomId()
        await t.unsafe(SQL.txRead, [id], { prepare: true })
        await t.unsafe(SQL.txWrite, [id % 100], { prepare: true })
        await t.unsafe(SQL.txRead, [id], { prepare: true })
      }),
    close: () => sql.end({ timeout: 5 }),
  }
}

module.exports = { libs: { pgdbpool, pg, 'postgres.js': postgresjs, ...require('./orm').ormLibs }, POOL_SIZE }
