'use strict'
// transactions.test.js again, through PgBouncer in transaction mode with the statement cache off.
process.env.PGDBPOOL_TEST_VIA = 'pgbouncer'
require('./transactions.test.js')
