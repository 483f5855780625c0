'use strict'
// Knex on pgdbpool/pg, unpatched: its own pg client class with pgdbpool/pg as the driver (Knex
// pools standalone Clients with tarn), and its `connectionPool` option (a pg.Pool of ours).
const test = require('ava')

const pg = require('pgdbpool/pg')
const knexFactory = require('knex')
const KnexPgClient = require('knex/lib/dialects/postgres')
const { startServer, guardProcess } = require('./helpers/pg')

guardProcess(test)

/** Knex's PostgreSQL client with pgdbpool/pg as its driver. */
class PgDbPoolKnexClient extends KnexPgClient {
  _driver() {
    return pg
  }
}

let server
let knex

test.before(async () => {
  server = await startServer()
  knex = knexFactory({ client: PgDbPoolKnexClient, connection: server.clientConfig(), pool: { min: 0, max: 4 } })
  await knex.schema.createTable('kx_accounts', (t) => {
    t.increments('id')
    t.string('name').notNullable().unique()
    t.integer('balance').notNullable().defaultTo(0)
    t.timestamp('opened_at', { useTz: true })
    t.jsonb('meta')
  })
})

test.after.always(async () => {
  if (knex) await knex.destroy()
  if (server) await server.destroy()
})

test.serial('CRUD', async (t) => {
  const openedAt = new Date('2022-02-03T04:05:06.007Z')
  const [row] = await knex('kx_accounts')
    .insert({ name: 'alice', balance: 10, opened_at: openedAt, meta: { tier: 'gold' } })
    .returning('*')
  t.is(row.name, 'alice')
  t.deepEqual(row.opened_at, openedAt)
  t.deepEqual(row.meta, { tier: 'gold' })
  t.is(await knex('kx_accounts').where({ id: row.id }).update({ balance: 20 }), 1)
  t.is((await knex('kx_accounts').where({ id: row.id }).first()).balance, 20)
  const [{ count }] = await knex('kx_accounts').count('* as count')
  t.is(count, '1')
  t.is(await knex('kx_accounts').where({ id: row.id }).del(), 1)
  const raw = await knex.raw('select ?::int + ?::int as sum', [2, 3])
  t.is(raw.rows[0].sum, 5)
})

test.serial('a transaction that commits, one that throws and rolls back, a nested one (savepoint)', async (t) => {
  await knex.transaction(async (trx) => {
    await trx('kx_accounts').insert({ name: 'tx-a' })
    await trx.transaction(async (inner) => {
      await inner('kx_accounts').insert({ name: 'tx-nested-kept' })
    })
    await t.throwsAsync(
      trx.transaction(async (inner) => {
        await inner('kx_accounts').insert({ name: 'tx-nested-gone' })
        throw new Error('inner boom')
      }),
      { message: 'inner boom' },
    )
  })
  await t.throwsAsync(
    knex.transaction(async (trx) => {
      await trx('kx_accounts').insert({ name: 'tx-b' })
      throw new Error('boom')
    }),
    { message: 'boom' },
  )
  const names = (await knex('kx_accounts').where('name', 'like', 'tx-%').orderBy('name')).map((r) => r.name)
  t.deepEqual(names, ['tx-a', 'tx-nested-kept'])
})

test.serial('a unique violation surfaces with its SQLSTATE', async (t) => {
  await knex('kx_accounts').insert({ name: 'dup' })
  const err = await t.throwsAsync(knex('kx_accounts').insert({ name: 'dup' }))
  t.is(err.code, '23505')
  t.is(err.constraint, 'kx_accounts_name_unique')
  t.true(err instanceof pg.DatabaseError)
})

test.serial("a large result; Knex's connections are pgdbpool/pg Clients with processID", async (t) => {
  const rows = await knex.select(knex.raw('n, md5(n::text) as h')).from(knex.raw('generate_series(1, 20000) as n'))
  t.is(rows.length, 20000)
  const pids = await Promise.all(Array.from({ length: 4 }, () => knex.transaction(async (trx) => (await trx.raw('select pg_backend_pid() as p')).rows[0].p)))
  t.true(pids.every((p) => Number.isInteger(p)))
})

test.serial('the connectionPool option: Knex borrows clients of a pgdbpool/pg Pool', async (t) => {
  const pool = new pg.Pool({ ...server.clientConfig(), max: 3 })
  const pooled = knexFactory({ client: PgDbPoolKnexClient, connectionPool: pool })
  try {
    await pooled('kx_accounts').insert({ name: 'via-pool' })
    await pooled.transaction(async (trx) => {
      await trx('kx_accounts').where({ name: 'via-pool' }).update({ balance: 5 })
    })
    t.is((await pooled('kx_accounts').where({ name: 'via-pool' }).first()).balance, 5)
  } finally {
    await pooled.destroy()
    await pool.end()
  }
})
