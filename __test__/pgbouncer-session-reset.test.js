'use strict'
// session-reset.test.js again, through PgBouncer in transaction mode with the statement cache
// off; the cases about session state skip there, with the reason in that file.
process.env.PGDBPOOL_TEST_VIA = 'pgbouncer'
require('./session-reset.test.js')
