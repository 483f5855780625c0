'use strict'
// TypeORM's postgres driver on pgdbpool/pg through its `driver` option, unpatched (schema
// synchronisation included).
const test = require('ava')

require('reflect-metadata')
const pg = require('pgdbpool/pg')
const { DataSource, EntitySchema } = require('typeorm')
const { startServer, guardProcess } = require('./helpers/pg')

guardProcess(test)

const Author = new EntitySchema({
  name: 'Author',
  tableName: 'to_author',
  columns: {
    id: { type: Number, primary: true, generated: true },
    email: { type: String, unique: true },
    rating: { type: 'numeric', precision: 5, scale: 2, nullable: true },
    joined: { type: 'timestamptz', nullable: true },
    profile: { type: 'jsonb', nullable: true },
  },
  relations: { books: { type: 'one-to-many', target: 'Book', inverseSide: 'author' } },
})
const Book = new EntitySchema({
  name: 'Book',
  tableName: 'to_book',
  columns: { id: { type: Number, primary: true, generated: true }, title: { type: String } },
  relations: { author: { type: 'many-to-one', target: 'Author', joinColumn: { name: 'author_id' }, inverseSide: 'books' } },
})

let server
let ds

test.before(async () => {
  server = await startServer()
  const c = server.clientConfig()
  ds = new DataSource({
    type: 'postgres',
    driver: pg,
    host: c.host,
    port: c.port,
    username: c.user,
    password: c.password,
    database: c.database,
    entities: [Author, Book],
    synchronize: true,
    poolSize: 4,
  })
  await ds.initialize()
})

test.after.always(async () => {
  if (ds?.isInitialized) await ds.destroy()
  if (server) await server.destroy()
})

test.serial('CRUD and a relation', async (t) => {
  const authors = ds.getRepository('Author')
  const books = ds.getRepository('Book')
  const joined = new Date('2019-08-07T06:05:04.003Z')
  const saved = await authors.save({ email: 'ann@example.com', rating: '4.50', joined, profile: { langs: ['en'] } })
  t.truthy(saved.id)
  await books.save([
    { title: 'one', author: saved },
    { title: 'two', author: saved },
  ])
  const found = await authors.findOne({ where: { id: saved.id }, relations: { books: true } })
  t.is(found.email, 'ann@example.com')
  t.is(found.rating, '4.50')
  t.deepEqual(found.joined, joined)
  t.deepEqual(found.profile, { langs: ['en'] })
  t.deepEqual(found.books.map((b) => b.title).sort(), ['one', 'two'])
  await authors.update({ id: saved.id }, { rating: '5.00' })
  t.is((await authors.findOneBy({ id: saved.id })).rating, '5.00')
  const qb = await ds.createQueryBuilder().select('count(*)', 'n').from('to_book', 'b').getRawOne()
  t.is(qb.n, '2')
  await books.clear()
  const del = await authors.delete({ id: saved.id })
  t.is(del.affected, 1)
})

test.serial('a transaction that commits, one that throws and rolls back, a nested one (savepoint)', async (t) => {
  await ds.transaction(async (manager) => {
    await manager.getRepository('Author').save({ email: 'tx1@example.com' })
  })
  await t.throwsAsync(
    ds.transaction(async (manager) => {
      await manager.getRepository('Author').save({ email: 'tx2@example.com' })
      throw new Error('boom')
    }),
    { message: 'boom' },
  )
  const runner = ds.createQueryRunner()
  await runner.connect()
  try {
    await runner.startTransaction()
    await runner.manager.getRepository('Author').save({ email: 'tx-outer@example.com' })
    await runner.startTransaction()
    await runner.manager.getRepository('Author').save({ email: 'tx-inner@example.com' })
    await runner.rollbackTransaction()
    await runner.commitTransaction()
  } finally {
    await runner.release()
  }
  const emails = (await ds.getRepository('Author').find({ order: { email: 'ASC' } })).map((a) => a.email).filter((e) => e.startsWith('tx'))
  t.deepEqual(emails, ['tx-outer@example.com', 'tx1@example.com'])
})

test.serial('a unique violation surfaces with its SQLSTATE', async (t) => {
  await ds.getRepository('Author').insert({ email: 'dup@example.com' })
  const err = await t.throwsAsync(ds.getRepository('Author').insert({ email: 'dup@example.com' }))
  t.is(err.name, 'QueryFailedError')
  t.is(err.driverError.code, '23505')
  t.is(err.code, '23505')
  t.true(err.driverError instanceof pg.DatabaseError)
})

test.serial('a large result', async (t) => {
  const rows = await ds.query('SELECT n, md5(n::text) AS h FROM generate_series(1, 20000) AS n WHERE n > $1', [0])
  t.is(rows.length, 20000)
  t.is(rows[19999].n, 20000)
})
