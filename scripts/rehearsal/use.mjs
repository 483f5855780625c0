// Rehearsal: the installed package from ESM, with named imports. PGDBPOOL_URL names the server.

import assert from 'node:assert/strict'
import { createRequire } from 'node:module'
import pgdbpool, { close, DBQueryError, Handler, init, query, withHandler } from 'pgdbpool'
import * as namespace from 'pgdbpool'

const require = createRequire(import.meta.url)
const cjs = require('pgdbpool')

// Every value the CommonJS entry exports is a named ESM export, and both are the same objects.
const { default: defaultExport, ...named } = namespace
assert.deepEqual(Object.keys(named).sort(), Object.keys(cjs).sort())
for (const key of Object.keys(cjs)) assert.equal(named[key], cjs[key], key)
assert.equal(defaultExport, cjs)
assert.equal(pgdbpool, cjs)

const u = new URL(process.env.PGDBPOOL_URL)
await init({
  db: { host: u.hostname, port: Number(u.port), name: u.pathname.slice(1), user: u.username, pass: decodeURIComponent(u.password) },
  groups: { default: { connection_count: 2 } },
})
const r = await query('SELECT $1::int + 1 AS n, $2::text AS s', [41, 'esm'])
assert.deepEqual(r.rows, [{ n: 42, s: 'esm' }])
const n = await withHandler('default', async (db) => (await db.query('SELECT count(*)::int AS n FROM generate_series(1, 10)')).rows[0].n)
assert.equal(n, 10)
const db = new Handler()
try {
  await assert.rejects(db.query('SELECT 1/0'), (e) => e instanceof DBQueryError && e.sqlState === '22012')
} finally {
  await db[Symbol.asyncDispose]()
}
await close()
console.log(`esm ok (${process.version} ${require('pgdbpool/package.json').version})`)
