'use strict'
// Creates and closes many pools (run with --expose-gc) and reports how many a
// FinalizationRegistry saw collected and how memory moved. For __test__/collect.test.js.
const path = require('node:path')
const lib = require(path.join(__dirname, '..', '..'))

const endpoint = JSON.parse(process.argv[2])
const count = Number(process.argv[3] || 1000)
let collected = 0
const registry = new FinalizationRegistry(() => collected++)

async function settle() {
  for (let i = 0; i < 4; i++) {
    global.gc()
    await new Promise((r) => setImmediate(r))
  }
}

;(async () => {
  const memory = []
  for (let i = 0; i < count; i++) {
    const pool = new lib.Pool({
      type: i % 10 === 0 ? 'threaded' : 'non-threaded',
      db: { ...endpoint, application_name: `collect-${i % 10}` },
      groups: { default: { connection_count: 1 } },
    })
    await pool.ready
    await pool.query('SELECT 1')
    await pool.withHandler('default', (db) => db.query('SELECT 2'))
    await pool.close()
    registry.register(pool, i)
    if ((i + 1) % 100 === 0) {
      await settle()
      memory.push({ after: i + 1, heapUsed: process.memoryUsage().heapUsed, rss: process.memoryUsage().rss, collected })
    }
  }
  const deadline = Date.now() + 20000
  while (collected < count && Date.now() < deadline) {
    await settle()
    await new Promise((r) => setTimeout(r, 50))
  }
  console.log(JSON.stringify({ count, collected, memory }))
})().catch((e) => {
  console.error('collect child failed', e && e.stack)
  process.exitCode = 3
})
