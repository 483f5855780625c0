'use strict'
// Kysely's own PostgresDialect on pgdbpool/pg: `new PostgresDialect({ pool, cursor })`, unpatched.
const test = require('ava')

const pg = require('pgdbpool/pg')
const { Pool: PgDbPool } = require('..')
const { startServer, guardProcess } = require('./helpers/pg')

guardProcess(test)

let server
let db
let kysely

test.before(async () => {
  server = await startServer()
  kysely = await import('kysely')
  db = new kysely.Kysely({ dialect: new kysely.PostgresDialect({ pool: new pg.Pool({ ...server.clientConfig(), max: 5 }), cursor: pg.Cursor }) })
  await db.schema
    .createTable('k_person')
    .addColumn('id', 'serial', (c) => c.primaryKey())
    .addColumn('email', 'text', (c) => c.notNull().unique())
    .addColumn('age', 'integer')
    .addColumn('born', 'timestamptz')
    .addColumn('meta', 'jsonb')
    .execute()
})

test.after.always(async () => {
  if (db) await db.destroy()
  if (server) await server.destroy()
})

test.serial('CRUD', async (t) => {
  const born = new Date('1990-05-06T07:08:09.123Z')
  const inserted = await db
    .insertInto('k_person')
    .values({ email: 'ann@example.com', age: 30, born, meta: JSON.stringify({ likes: ['tea'] }) })
    .returning(['id', 'email'])
    .executeTakeFirstOrThrow()
  t.is(inserted.email, 'ann@example.com')
  const row = await db.selectFrom('k_person').selectAll().where('id', '=', inserted.id).executeTakeFirstOrThrow()
  t.is(row.age, 30)
  t.deepEqual(row.born, born)
  t.deepEqual(row.meta, { likes: ['tea'] })
  const updated = await db.updateTable('k_person').set({ age: 31 }).where('id', '=', inserted.id).executeTakeFirst()
  t.is(updated.numUpdatedRows, 1n)
  t.is((await db.selectFrom('k_person').select('age').where('id', '=', inserted.id).executeTakeFirstOrThrow()).age, 31)
  const deleted = await db.deleteFrom('k_person').where('id', '=', inserted.id).executeTakeFirst()
  t.is(deleted.numDeletedRows, 1n)
  const count = await db.selectFrom('k_person').select(db.fn.countAll().as('n')).executeTakeFirstOrThrow()
  t.is(count.n, '0')
})

test.serial('a transaction that commits, one that throws and rolls back', async (t) => {
  await db.transaction().execute(async (trx) => {
    await trx.insertInto('k_person').values({ email: 'tx1@example.com' }).execute()
    await trx.insertInto('k_person').values({ email: 'tx2@example.com' }).execute()
  })
  await t.throwsAsync(
    db.transaction().execute(async (trx) => {
      await trx.insertInto('k_person').values({ email: 'tx3@example.com' }).execute()
      throw new Error('boom')
    }),
    { message: 'boom' },
  )
  const emails = (await db.selectFrom('k_person').select('email').where('email', 'like', 'tx%').orderBy('email').execute()).map((r) => r.email)
  t.deepEqual(emails, ['tx1@example.com', 'tx2@example.com'])
})

test.serial('a nested transaction: savepoints of a controlled transaction', async (t) => {
  const trx = await db.startTransaction().execute()
  await trx.insertInto('k_person').values({ email: 'sp-outer@example.com' }).execute()
  const sp = await trx.savepoint('inner').execute()
  await sp.insertInto('k_person').values({ email: 'sp-inner@example.com' }).execute()
  const back = await sp.rollbackToSavepoint('inner').execute()
  const sp2 = await back.savepoint('second').execute()
  await sp2.insertInto('k_person').values({ email: 'sp-kept@example.com' }).execute()
  await sp2.releaseSavepoint('second').execute()
  await trx.commit().execute()
  const emails = (await db.selectFrom('k_person').select('email').where('email', 'like', 'sp-%').orderBy('email').execute()).map((r) => r.email)
  t.deepEqual(emails, ['sp-kept@example.com', 'sp-outer@example.com'])
})

test.serial('a unique violation surfaces with its SQLSTATE; the failed transaction is rolled back', async (t) => {
  await db.insertInto('k_person').values({ email: 'dup@example.com' }).execute()
  const err = await t.throwsAsync(db.insertInto('k_person').values({ email: 'dup@example.com' }).execute())
  t.is(err.code, '23505')
  t.is(err.constraint, 'k_person_email_key')
  t.true(err instanceof pg.DatabaseError)
  await t.throwsAsync(
    db.transaction().execute(async (trx) => {
      await trx.insertInto('k_person').values({ email: 'dup-tx@example.com' }).execute()
      await trx.insertInto('k_person').values({ email: 'dup@example.com' }).execute()
    }),
    { code: '23505' },
  )
  t.is((await db.selectFrom('k_person').select('email').where('email', '=', 'dup-tx@example.com').execute()).length, 0)
})

test.serial('a streamed large result (cursor)', async (t) => {
  const { sql } = kysely
  let n = 0
  let sum = 0
  for await (const row of db.selectFrom(sql`generate_series(1, 30000)`.as('g')).select(sql`g`.as('v')).stream(500)) {
    n++
    sum += row.v
  }
  t.is(n, 30000)
  t.is(sum, (30000 * 30001) / 2)
})

test.serial('on a wrapped pgdbpool pool and group', async (t) => {
  const base = new PgDbPool({ type: 'non-threaded', db: server.endpoint, groups: { default: { connection_count: 2 }, write: { connection_count: 2 } } })
  const wrapped = new kysely.Kysely({ dialect: new kysely.PostgresDialect({ pool: new pg.Pool({ pool: base, group: 'write' }) }) })
  try {
    await wrapped.insertInto('k_person').values({ email: 'wrapped@example.com' }).execute()
    t.is((await wrapped.selectFrom('k_person').select('email').where('email', '=', 'wrapped@example.com').execute()).length, 1)
  } finally {
    await wrapped.destroy()
    await base.close()
  }
})
