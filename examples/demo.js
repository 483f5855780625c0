'use strict'
// A two-endpoint demo on embedded PostgreSQL: `npm run demo`.
const { init, Handler, withHandler, query, stats, close } = require('..')
const { startServer } = require('../__test__/helpers/pg')

;(async () => {
  console.log('starting two embedded PostgreSQL servers...')
  const a = await startServer({ embedded: true })
  const b = await startServer({ embedded: true })
  try {
    await init({
      db: [
        { ...a.endpoint, id: 'a' },
        { ...b.endpoint, id: 'b' },
      ],
      groups: {
        default: { connection_count: 4 },
        tx: { connection_count: 2, autocommit: false, endpoints: ['a'] },
      },
    })
    await query('CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, body text)', [], { group: 'tx' })

    const db = new Handler('tx')
    try {
      await db.query('INSERT INTO notes (body) VALUES ($1)', ['hello from pgdbpool'])
      await db.commit()
    } finally {
      await db.release()
    }

    await withHandler('tx', async (db) => {
      const r = await db.query('SELECT id, body FROM notes ORDER BY id')
      console.log('rows:', r.rows)
    })

    const ports = await Promise.all(Array.from({ length: 8 }, () => query('SELECT inet_server_port() AS port')))
    console.log('default group served by ports:', [...new Set(ports.map((r) => r.rows[0].port))].sort())
    const s = stats().groups.default
    console.log('default group:', { size: s.size, idle: s.idle, endpoints: s.endpoints.map((e) => `${e.id}:${e.size}`) })
    await close()
  } finally {
    await a.destroy()
    await b.destroy()
  }
})().catch((e) => {
  console.error(e)
  process.exit(1)
})
