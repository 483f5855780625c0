'use strict'
// The setup of the fault tests (retry.test.js, timeouts.test.js): two embedded servers (with the
// table ha_once), TCP fault proxies in front of them, and the small helpers those tests share.

const { startServer, external } = require('./pg')
const { startProxy } = require('./proxy')

/** Registers the file's hooks; `servers` fills in the before hook (empty against an external server). */
function useFaultServers(test, prefix) {
  const servers = []
  const cleanups = []
  let seq = 0

  test.before(async () => {
    if (external) return
    for (let i = 0; i < 2; i++) {
      const s = await startServer({ embedded: true })
      await s.sql('CREATE TABLE IF NOT EXISTS ha_once (id serial PRIMARY KEY, tag text NOT NULL)')
      servers.push(s)
    }
  })

  test.after.always(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => {})
    await Promise.all(servers.map((s) => s.destroy()))
  })

  return {
    servers,
    /** Cleanups run after the file's tests, last registered first. */
    cleanups,
    /** An application_name of its own, so that server-side counts are per test. */
    app: () => `pgdbpool-${prefix}${process.pid}-${++seq}`,
    /** A fault proxy in front of `server`, closed after the file's tests. */
    async proxyTo(server) {
      const proxy = await startProxy(server.port)
      cleanups.push(() => proxy.close())
      return proxy
    },
  }
}

/** Endpoint of `server`, reached through `proxy` when given. */
function endpoint(server, id, application_name, extra = {}, proxy = null) {
  return { ...server.endpoint, ...(proxy ? proxy.endpoint : {}), id, application_name, ...extra }
}

/** `n` handlers of `group`, each holding a connection it has run a statement on. */
async function holdMany(pool, group, n) {
  const handlers = Array.from({ length: n }, () => pool.handler(group))
  await Promise.all(handlers.map((h) => h.query('SELECT 1')))
  return handlers
}

/** The value or error of `promise`, with how long it took to settle. */
async function timed(promise) {
  const started = Date.now()
  try {
    return { value: await promise, ms: Date.now() - started }
  } catch (error) {
    return { error, ms: Date.now() - started }
  }
}

module.exports = { useFaultServers, endpoint, holdMany, timed }
