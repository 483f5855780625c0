'use strict'
// Drizzle's node-postgres driver on pgdbpool/pg: `drizzle({ client: pool, schema })`, unpatched.
// Its select paths use `rowMode: 'array'` with a per-query `types.getTypeParser` (date/time types
// as PostgreSQL's text), its relational queries JSON aggregates.
const test = require('ava')

const pg = require('pgdbpool/pg')
const { drizzle } = require('drizzle-orm/node-postgres')
const { pgTable, serial, text, integer, timestamp, date, jsonb, numeric, interval } = require('drizzle-orm/pg-core')
const { eq, relations, sql, asc } = require('drizzle-orm')
const { startServer, guardProcess } = require('./helpers/pg')

guardProcess(test)

const users = pgTable('d_users', {
  id: serial('id').primaryKey(),
  email: text('email').notNull().unique(),
  age: integer('age'),
  createdAt: timestamp('created_at', { withTimezone: true, mode: 'date' }).notNull().defaultNow(),
  plain: timestamp('plain', { mode: 'string' }),
  birthday: date('birthday', { mode: 'string' }),
  prefs: jsonb('prefs'),
  balance: numeric('balance'),
  wait: interval('wait'),
})
const posts = pgTable('d_posts', {
  id: serial('id').primaryKey(),
  userId: integer('user_id')
    .notNull()
    .references(() => users.id),
  title: text('title').notNull(),
})
const usersRelations = relations(users, ({ many }) => ({ posts: many(posts) }))
const postsRelations = relations(posts, ({ one }) => ({ author: one(users, { fields: [posts.userId], references: [users.id] }) }))
const schema = { users, posts, usersRelations, postsRelations }

let server
let pool
let db

test.before(async () => {
  server = await startServer()
  pool = new pg.Pool({ ...server.clientConfig(), max: 5, options: '-c TimeZone=UTC' })
  db = drizzle({ client: pool, schema })
  await db.execute(
    sql`CREATE TABLE d_users (id serial PRIMARY KEY, email text NOT NULL UNIQUE, age int, created_at timestamptz NOT NULL DEFAULT now(), plain timestamp, birthday date, prefs jsonb, balance numeric, wait interval)`,
  )
  await db.execute(sql`CREATE TABLE d_posts (id serial PRIMARY KEY, user_id int NOT NULL REFERENCES d_users(id), title text NOT NULL)`)
})

test.after.always(async () => {
  if (pool) await pool.end()
  if (server) await server.destroy()
})

test.serial('CRUD with types through the per-query parsers', async (t) => {
  const createdAt = new Date('2021-03-04T05:06:07.089Z')
  const [row] = await db
    .insert(users)
    .values({
      email: 'ann@example.com',
      age: 30,
      createdAt,
      plain: '2020-01-02 03:04:05.123456',
      birthday: '1990-05-06',
      prefs: { theme: 'dark' },
      balance: '12.50',
      wait: '1 day 02:00:00',
    })
    .returning()
  t.is(row.email, 'ann@example.com')
  t.deepEqual(row.createdAt, createdAt)
  t.is(row.plain, '2020-01-02 03:04:05.123456')
  t.is(row.birthday, '1990-05-06')
  t.deepEqual(row.prefs, { theme: 'dark' })
  t.is(row.balance, '12.50')
  t.is(row.wait, '1 day 02:00:00')
  const [found] = await db.select().from(users).where(eq(users.id, row.id))
  t.deepEqual(found, row)
  const partial = await db.select({ email: users.email, age: users.age }).from(users).where(eq(users.id, row.id))
  t.deepEqual(partial, [{ email: 'ann@example.com', age: 30 }])
  await db.update(users).set({ age: 31 }).where(eq(users.id, row.id))
  t.is((await db.select({ age: users.age }).from(users).where(eq(users.id, row.id)))[0].age, 31)
  const raw = await db.execute(sql`SELECT count(*)::int AS n FROM d_users`)
  t.is(raw.rows[0].n, 1)
  await db.delete(users).where(eq(users.id, row.id))
  t.is((await db.select().from(users)).length, 0)
})

test.serial('relational queries', async (t) => {
  const [u] = await db.insert(users).values({ email: 'rel@example.com' }).returning({ id: users.id })
  await db.insert(posts).values([
    { userId: u.id, title: 'first' },
    { userId: u.id, title: 'second' },
  ])
  const found = await db.query.users.findFirst({ where: eq(users.id, u.id), with: { posts: { orderBy: asc(posts.id) } } })
  t.deepEqual(
    found.posts.map((p) => p.title),
    ['first', 'second'],
  )
  t.true(found.createdAt instanceof Date)
  const withAuthor = await db.query.posts.findMany({ with: { author: true }, orderBy: asc(posts.id) })
  t.is(withAuthor[0].author.email, 'rel@example.com')
})

test.serial('a transaction that commits, one that throws and rolls back, a nested one (savepoint)', async (t) => {
  await db.transaction(async (tx) => {
    await tx.insert(users).values({ email: 'tx1@example.com' })
    await tx.transaction(async (inner) => {
      await inner.insert(users).values({ email: 'tx-nested-kept@example.com' })
    })
    await t.throwsAsync(
      tx.transaction(async (inner) => {
        await inner.insert(users).values({ email: 'tx-nested-gone@example.com' })
        throw new Error('inner boom')
      }),
      { message: 'inner boom' },
    )
  })
  await t.throwsAsync(
    db.transaction(async (tx) => {
      await tx.insert(users).values({ email: 'tx2@example.com' })
      throw new Error('boom')
    }),
    { message: 'boom' },
  )
  const emails = (await db.select({ email: users.email }).from(users).where(sql`${users.email} like 'tx%'`).orderBy(asc(users.email))).map((r) => r.email)
  t.deepEqual(emails, ['tx-nested-kept@example.com', 'tx1@example.com'])
})

test.serial('a unique violation surfaces with its SQLSTATE', async (t) => {
  await db.insert(users).values({ email: 'dup@example.com' })
  const err = await t.throwsAsync(db.insert(users).values({ email: 'dup@example.com' }))
  const cause = err.cause ?? err
  t.is(cause.code, '23505')
  t.is(cause.constraint, 'd_users_email_key')
  t.true(cause instanceof pg.DatabaseError)
})

test.serial('a large result, prepared statements', async (t) => {
  const big = await db.execute(sql`SELECT n, md5(n::text) AS h FROM generate_series(1, 20000) AS n`)
  t.is(big.rows.length, 20000)
  t.is(big.rows[19999].n, 20000)
  const byId = db
    .select()
    .from(users)
    .where(eq(users.email, sql.placeholder('email')))
    .prepare('d_by_email')
  t.is((await byId.execute({ email: 'dup@example.com' }))[0].email, 'dup@example.com')
  t.is((await byId.execute({ email: 'nobody@example.com' })).length, 0)
})
