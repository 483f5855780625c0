'use strict'
// The whole basic suite again, through PgBouncer in transaction mode with the statement cache
// off on every group (issue 4). basic.test.js reads PGDBPOOL_TEST_VIA when it loads; ava runs
// each test file in a process of its own, so this changes nothing for the other files.
process.env.PGDBPOOL_TEST_VIA = 'pgbouncer'
require('./basic.test.js')
