'use strict'
// ORM rows: Drizzle and Kysely, each on pgdbpool (through pgdbpool/pg), on pg.Pool and on
// postgres.js (drizzle-orm/postgres-js, kysely-postgres-js), same server, same pool size.
// Workloads: `orm_lookup` (select by primary key) and `orm_tx` (a transaction of three
// statements: read, write, read).

const { randomId, pgPoolOptions, postgresOptions } = require('./clients')

/** The client each ORM runs on: a pg-shaped pool (pgdbpool/pg or pg) or postgres.js. */
function driver(kind, endpoint, app) {
  if (kind === 'postgres.js') {
    const sql = require('postgres')(postgresOptions(endpoint, app))
    return { sql, close: () => sql.end({ timeout: 5 }) }
  }
  const { Pool } = kind === 'pgdbpool' ? require('pgdbpool/pg') : require('pg')
  const pool = new Pool(pgPoolOptions(endpoint, app))
  pool.on('error', () => {})
  return { pool, close: () => pool.end() }
}

function drizzleOn(kind) {
  return async (endpoint) => {
    const { pgTable, integer, text } = require('drizzle-orm/pg-core')
    const { eq, sql: raw } = require('drizzle-orm')
    const items = pgTable('bench_items', { id: integer('id').primaryKey(), name: text('name'), qty: integer('qty') })
    const counters = pgTable('bench_counters', { id: integer('id').primaryKey(), n: integer('n') })
    const d = driver(kind, endpoint, `bench-drizzle-${kind}`)
    const db =
      kind === 'postgres.js' ? require('drizzle-orm/postgres-js').drizzle({ client: d.sql }) : require('drizzle-orm/node-postgres').drizzle({ client: d.pool })
    const lookup = (id) => db.select({ id: items.id, name: items.name, qty: items.qty }).from(items).where(eq(items.id, id))
    return {
      name: `drizzle/${kind}`,
      orm_lookup: () => lookup(randomId()),
      orm_tx: () =>
        db.transaction(async (tx) => {
          const id = randomId()
          await tx.select({ qty: items.qty }).from(items).where(eq(items.id, id))
          await tx
            .update(counters)
            .set({ n: raw`${counters.n} + 1` })
            .where(eq(counters.id, id % 100))
          await tx.select({ qty: items.qty }).from(items).where(eq(items.id, id))
        }),
      close: d.close,
    }
  }
}

function kyselyOn(kind) {
  return async (endpoint) => {
    const { Kysely, PostgresDialect, sql: raw } = await import('kysely')
    const d = driver(kind, endpoint, `bench-kysely-${kind}`)
    let dialect
    if (kind === 'postgres.js') {
      const { PostgresJSDialect } = await import('kysely-postgres-js')
      dialect = new PostgresJSDialect({ postgres: d.sql })
    } else {
      dialect = new PostgresDialect({ pool: d.pool })
    }
    const db = new Kysely({ dialect })
    return {
      name: `kysely/${kind}`,
      orm_lookup: () => db.selectFrom('bench_items').select(['id', 'name', 'qty']).where('id', '=', randomId()).execute(),
      orm_tx: () =>
        db.transaction().execute(async (trx) => {
          const id = randomId()
          await trx.selectFrom('bench_items').select('qty').where('id', '=', id).execute()
          await trx
            .updateTable('bench_counters')
            .set({ n: raw`n + 1` })
            .where('id', '=', id % 100)
            .execute()
          await trx.selectFrom('bench_items').select('qty').where('id', '=', id).execute()
        }),
      // Kysely's destroy() ends the pool (or postgres.js's sql).
      close: () => db.destroy(),
    }
  }
}

const KINDS = ['pgdbpool', 'pg', 'postgres.js']
const ormLibs = {}
for (const kind of KINDS) {
  ormLibs[`drizzle/${kind}`] = drizzleOn(kind)
  ormLibs[`kysely/${kind}`] = kyselyOn(kind)
}

module.exports = { ormLibs, ORMS: ['drizzle', 'kysely'], ORM_KINDS: KINDS, ORM_WORKLOADS: ['orm_lookup', 'orm_tx'] }
