'use strict'
// Connection settings: a URL, per-endpoint session settings, target_session_attrs, and no
// password in connection errors.
// PGDBPOOL_TEST_VIA=pgbouncer (pgbouncer.test.js): the same tests through PgBouncer.
const test = require('ava')
const { inspect } = require('node:util')

const { Pool, DBQueryError, DBConnectionError, DBOfflineError } = require('..')
const { guardProcess, PASSWORD } = require('./helpers/pg')
const { useTarget } = require('./helpers/target')

guardProcess(test)

const target = useTarget(test)

test('URL configuration, port, and application_name', async (t) => {
  const pool = new Pool({
    type: 'non-threaded',
    db: `${target.viaBouncer ? target.url() : target.server.url}?application_name=from-url`,
    groups: target.groupsFor({ default: { connection_count: 1 } }),
  })
  const r = await pool.query("SELECT current_setting('application_name') AS app, inet_server_port() AS port")
  t.is(r.rows[0].app, 'from-url')
  t.is(r.rows[0].port, target.server.port)
  await pool.close()
})

test('query_timeout and session_tmp_buffer apply per endpoint, not process-wide', async (t) => {
  const pool = new Pool({
    type: 'non-threaded',
    db: [
      { ...target.endpoint(), id: 'fast', query_timeout: 1234, session_tmp_buffer: 16 },
      { ...target.endpoint(), id: 'slow', query_timeout: 4321, session_tmp_buffer: 32 },
    ],
    groups: target.groupsFor({ fast: { connection_count: 1, endpoints: ['fast'] }, slow: { connection_count: 1, endpoints: ['slow'] } }),
  })
  t.is(process.env.PGOPTIONS, undefined)
  if (target.viaBouncer) {
    // They travel as startup `options`, which PgBouncer is told to ignore: its shared server sessions keep the server's values.
    const direct = (await target.server.sql("SELECT current_setting('statement_timeout') AS st, current_setting('temp_buffers') AS tb")).rows[0]
    t.is((await pool.query('SHOW statement_timeout', [], { group: 'fast' })).rows[0].statement_timeout, direct.st)
    t.is((await pool.query('SHOW temp_buffers', [], { group: 'slow' })).rows[0].temp_buffers, direct.tb)
    // The client-side check (no answer within query_timeout + 1 s) still holds: cancelled, connection dropped.
    await t.throwsAsync(pool.query('SELECT pg_sleep(3)', [], { group: 'fast' }), { instanceOf: DBConnectionError })
    await pool.close()
    return
  }
  t.is((await pool.query('SHOW statement_timeout', [], { group: 'fast' })).rows[0].statement_timeout, '1234ms')
  t.is((await pool.query('SHOW statement_timeout', [], { group: 'slow' })).rows[0].statement_timeout, '4321ms')
  t.is((await pool.query('SHOW temp_buffers', [], { group: 'fast' })).rows[0].temp_buffers, '16MB')
  t.is((await pool.query('SHOW temp_buffers', [], { group: 'slow' })).rows[0].temp_buffers, '32MB')
  const err = await t.throwsAsync(pool.query('SELECT pg_sleep(3)', [], { group: 'fast' }), { instanceOf: DBQueryError })
  t.is(err.sqlState, '57014')
  await pool.close()
})

test('target_session_attrs: a read-only group finds no standby, a read-write group works', async (t) => {
  const pool = new Pool({
    type: 'non-threaded',
    db: target.endpoint(),
    groups: target.groupsFor({
      write: { connection_count: 1, target_session_attrs: 'read-write' },
      read: { connection_count: 1, target_session_attrs: 'standby', acquire_timeout: 2000 },
    }),
  })
  const err = await t.throwsAsync(pool.ready, { instanceOf: DBOfflineError })
  t.regex(err.message, /group 'read'/)
  t.deepEqual((await pool.query('SELECT 1 AS x', [], { group: 'write' })).rows, [{ x: 1 }])
  await t.throwsAsync(pool.query('SELECT 1', [], { group: 'read' }), { instanceOf: DBOfflineError })
  await pool.close()
})

test('passwords do not leak into connection errors', async (t) => {
  const pool = new Pool({
    type: 'non-threaded',
    db: { ...target.endpoint(), pass: 'wrong-password-xyz' },
    groups: target.groupsFor({ default: { connection_count: 1, acquire_timeout: 2000 } }),
  })
  const err = await t.throwsAsync(pool.ready, { instanceOf: DBOfflineError })
  t.false(err.message.includes('wrong-password-xyz'))
  t.false(err.message.includes(PASSWORD))
  // PgBouncer words a failed SCRAM login its own way.
  t.regex(err.message, target.viaBouncer ? /SASL authentication failed/ : /password authentication failed/)
  t.false(inspect(err, { depth: 5 }).includes('wrong-password-xyz'))
  await pool.close()
})
