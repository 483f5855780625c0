'use strict'
// Runs queries against a server (the hostile fake one, or a real one) in a process of its own:
// a decoder that loops forever or a stack overflow must fail the test, not hang or kill the
// runner. argv[2] is the server's endpoint as JSON, the rest are `SQL` texts to run one after
// the other on each of two pools (named statements, and unnamed ones as for PgBouncer). Prints
// one JSON line per query: { pool, sql, ok, rows | error }.

const path = require('node:path')
const lib = require(path.join(__dirname, '..', '..'))

const endpoint = JSON.parse(process.argv[2])
const queries = process.argv.slice(3)

function plain(value) {
  return JSON.parse(
    JSON.stringify(value, (_, v) => {
      if (typeof v === 'bigint') return `${v}n`
      if (v && v.type === 'Buffer' && Array.isArray(v.data)) return `<Buffer ${v.data.length}>`
      return v
    }),
  )
}

;(async () => {
  for (const [name, statement_cache_size] of [
    ['named', 256],
    ['unnamed', 0],
  ]) {
    const pool = new lib.Pool({
      type: 'non-threaded',
      db: { ...endpoint, query_timeout: 0, connect_timeout: 5 },
      groups: { default: { connection_count: 1, statement_cache_size, acquire_timeout: 5000 } },
      health_interval: 1000000,
    })
    for (const sql of queries) {
      try {
        const r = await pool.query(sql)
        const row = r.rows[0]
        console.log(
          JSON.stringify({
            pool: name,
            sql,
            ok: true,
            rows: plain(r.rows),
            proto: row ? Object.getPrototypeOf(row) === Object.prototype : null,
            ownKeys: row ? Object.keys(row) : [],
          }),
        )
      } catch (e) {
        console.log(
          JSON.stringify({ pool: name, sql, ok: false, error: { name: e && e.name, code: e && e.code, message: String(e && e.message).slice(0, 500) } }),
        )
      }
    }
    await pool.close({ timeout: 1000 })
  }
})().catch((e) => {
  console.error('hostile child failed', e && e.stack)
  process.exitCode = 3
})
