'use strict'
// The pool's core tests again, through PgBouncer in transaction mode with the statement cache
// off on every group. The files read PGDBPOOL_TEST_VIA when they load; ava runs each test file in
// a process of its own, so this changes nothing for the other files.
process.env.PGDBPOOL_TEST_VIA = 'pgbouncer'
for (const file of ['module-api', 'handler', 'waiting', 'backend-kill', 'connection-config', 'queries', 'close']) require(`./${file}.test.js`)
