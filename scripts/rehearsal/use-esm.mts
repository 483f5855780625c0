// Rehearsal: the installed package from TypeScript compiled to ESM (the `import` types).

import assert from 'node:assert/strict'
import { close, type Config, Handler, init, PgDbPoolError, query } from 'pgdbpool'

const u = new URL(process.env.PGDBPOOL_URL ?? '')
const config: Config = {
  db: { host: u.hostname, port: Number(u.port), name: u.pathname.slice(1), user: u.username, pass: decodeURIComponent(u.password) },
  groups: { default: { connection_count: 2 } },
}
await init(config)
{
  await using db = new Handler()
  const r = await db.query<{ n: number }>('SELECT $1::int + 1 AS n', [41])
  const n: number = r.rows[0].n
  assert.equal(n, 42)
}
const e = await query('SELECT nope').catch((error: unknown) => error)
assert.ok(e instanceof PgDbPoolError)
await close()
console.log(`ts-esm ok (${process.version})`)
