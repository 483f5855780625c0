// Rehearsal: the installed package from TypeScript compiled to CommonJS (the `require` types).

import assert from 'node:assert/strict'
import { close, type Config, Handler, init, type QueryResult } from 'pgdbpool'

interface Row {
  n: number
  s: string
}

async function main(): Promise<string> {
  const u = new URL(process.env.PGDBPOOL_URL ?? '')
  const config: Config = {
    db: { host: u.hostname, port: Number(u.port), name: u.pathname.slice(1), user: u.username, pass: decodeURIComponent(u.password) },
    groups: { default: { connection_count: 2 }, tx: { connection_count: 1, autocommit: false } },
  }
  await init(config)
  {
    await using db = new Handler('tx')
    await db.query('CREATE TEMP TABLE t (a int)')
    await db.query('INSERT INTO t VALUES ($1)', [7])
    await db.commit()
    const r: QueryResult<Row> = await db.query<Row>('SELECT $1::int + 1 AS n, $2::text AS s', [41, 'ts-cjs'])
    assert.deepEqual(r.rows, [{ n: 42, s: 'ts-cjs' }])
  }
  await close()
  return process.version
}

main().then(
  (version) => console.log(`ts-cjs ok (${version})`),
  (e: unknown) => {
    console.error(e)
    process.exitCode = 1
  },
)
