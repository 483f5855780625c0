'use strict'
// Rehearsal: the installed package from CommonJS. PGDBPOOL_URL names the server.

const assert = require('node:assert/strict')
const { init, query, withHandler, Handler, close, stats, DBQueryError } = require('pgdbpool')

async function main() {
  const u = new URL(process.env.PGDBPOOL_URL)
  await init({
    db: { host: u.hostname, port: Number(u.port), name: u.pathname.slice(1), user: u.username, pass: decodeURIComponent(u.password) },
    groups: { default: { connection_count: 2 }, tx: { connection_count: 1, autocommit: false } },
  })
  const r = await query('SELECT $1::int + 1 AS n, $2::text AS s', [41, 'cjs'])
  assert.deepEqual(r.rows, [{ n: 42, s: 'cjs' }])
  assert.equal(r.command, 'SELECT')
  await withHandler('tx', async (db) => {
    await db.query('CREATE TEMP TABLE t (a int)')
    await db.query('INSERT INTO t VALUES (1), (2)')
    const sum = await db.query('SELECT sum(a)::int AS s FROM t')
    assert.equal(sum.rows[0].s, 3)
  })
  const db = new Handler('default')
  try {
    await assert.rejects(db.query('SELECT nope'), (e) => e instanceof DBQueryError && e.sqlState === '42703')
  } finally {
    await db[Symbol.asyncDispose]()
  }
  assert.ok(stats().groups.default.size > 0)
  await close()
  return `${process.version} ${require('pgdbpool/package.json').version}`
}

main().then(
  (what) => console.log(`cjs ok (${what})`),
  (e) => {
    console.error(e)
    process.exitCode = 1
  },
)
