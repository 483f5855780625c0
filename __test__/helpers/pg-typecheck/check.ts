// Type-checked (not run) by pg-typecheck.test.js: pgdbpool/pg's Pool and Cursor where Drizzle,
// Kysely and Prisma's adapter expect node-postgres's (@types/pg) types, with no casts.
import pg, { Pool, Client, type QueryResult } from 'pgdbpool/pg'
import { drizzle } from 'drizzle-orm/node-postgres'
import { Kysely, PostgresDialect } from 'kysely'
import { PrismaPg } from '@prisma/adapter-pg'
import type * as realPg from 'pg'

const pool = new Pool({ connectionString: 'postgres://localhost/db', max: 5 })
const viaDrizzle = drizzle({ client: pool })
const viaKysely = new Kysely<Record<string, never>>({ dialect: new PostgresDialect({ pool, cursor: pg.Cursor }) })
const viaPrisma = new PrismaPg(pool)
const asPg: realPg.Pool = pool
const client: realPg.Client = new Client({ host: 'localhost' })
async function forms(): Promise<number> {
  const r: QueryResult<{ a: number }> = await pool.query<{ a: number }>('SELECT $1::int AS a', [1])
  const c = await pool.connect()
  const rows = await c.query({ text: 'SELECT 1', rowMode: 'array' })
  c.release()
  return r.rows[0].a + rows.rows.length
}
void viaDrizzle
void viaKysely
void viaPrisma
void asPg
void client
void forms
