'use strict'
// Statements: parameters always bound, command tags and row counts, multi-statement scripts,
// the sqlprepare / queryPrepared calls.
// PGDBPOOL_TEST_VIA=pgbouncer (pgbouncer.test.js): the same tests through PgBouncer.
const test = require('ava')

const { DBQueryError } = require('..')
const { guardProcess } = require('./helpers/pg')
const { useTarget } = require('./helpers/target')

guardProcess(test)

const target = useTarget(test)

test('parameters are bound, never interpolated', async (t) => {
  const { pool } = target.makePool()
  const evil = "x'); DROP TABLE items; --"
  const r = await pool.query('SELECT $1::text AS v', [evil])
  t.is(r.rows[0].v, evil)
  t.is((await target.server.sql("SELECT to_regclass('items') IS NOT NULL AS ok")).rows[0].ok, true)
  await t.throwsAsync(pool.query('SELECT $1::int', [Symbol('x')]), { instanceOf: TypeError })
  await t.throwsAsync(pool.query('SELECT $1::int, $2::int', [1]), { instanceOf: DBQueryError })
  // Still fine afterwards.
  t.deepEqual((await pool.query('SELECT 2 AS two')).rows, [{ two: 2 }])
  await pool.close()
})

test('commands, rowCount, multi-statement scripts', async (t) => {
  const { pool } = target.makePool()
  const id = 5000 + target.seq
  const ins = await pool.query('INSERT INTO items VALUES ($1, $2), ($3, $4)', [id, 'a', id + 1, 'b'])
  t.is(ins.command, 'INSERT')
  t.is(ins.rowCount, 2)
  const upd = await pool.query('WITH x AS (SELECT 1) UPDATE items SET name = $2 WHERE id >= $1 AND id < $1 + 2', [id, 'c'])
  t.is(upd.command, 'UPDATE')
  t.is(upd.rowCount, 2)
  const del = await pool.query('DELETE FROM items WHERE id >= $1 AND id < $1 + 2', [id])
  t.is(del.rowCount, 2)
  const script = await pool.query(`CREATE TEMP TABLE s1 (a int); INSERT INTO s1 VALUES (1); DROP TABLE s1`)
  t.is(script.command, 'CREATE')
  t.is(script.rowCount, null)
  await pool.close()
})

test('sqlprepare runs PrepareQueries on each new connection; queryPrepared calls ExecuteQuery', async (t) => {
  await target.server.sql(`CREATE SCHEMA IF NOT EXISTS "SQLPrepare"`)
  await target.server.sql(`CREATE TABLE IF NOT EXISTS "SQLPrepare".calls (pid int, at timestamptz DEFAULT now())`)
  await target.server.sql(`CREATE OR REPLACE FUNCTION "SQLPrepare"."PrepareQueries"() RETURNS void LANGUAGE plpgsql AS $$
    BEGIN INSERT INTO "SQLPrepare".calls(pid) VALUES (pg_backend_pid()); END $$`)
  await target.server.sql(`CREATE OR REPLACE FUNCTION "SQLPrepare"."ExecuteQuery"(name text, a int) RETURNS json LANGUAGE sql AS $$
    SELECT json_build_object('query', name, 'result', a * 2, 'prepared', EXISTS (SELECT 1 FROM "SQLPrepare".calls WHERE pid = pg_backend_pid())) $$`)
  const { pool } = target.makePool({ prep: { connection_count: 1, sqlprepare: true } })
  const db = pool.handler('prep')
  const result = await db.queryPrepared(['Test_Query_1', 21])
  const expected = { query: 'Test_Query_1', result: 42, prepared: true }
  if (target.viaBouncer) {
    // PrepareQueries ran at connect, through PgBouncer on whichever server session served it: maybe not this one.
    t.true((await target.server.sql('SELECT count(*)::int AS n FROM "SQLPrepare".calls')).rows[0].n >= 1)
    expected.prepared = result.prepared
  }
  t.deepEqual(result, expected)
  await db.release()
  await pool.close()
})
