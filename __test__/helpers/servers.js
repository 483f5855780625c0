'use strict'
// Several embedded servers for a test file whose pools span endpoints: `servers` fills in the
// before hook (it stays empty against an external server, where such tests pass without running).

const { startServer, external } = require('./pg')

/** Registers the file's hooks for `count` servers; `endpoints(app)` lists them as s0, s1, … */
function useServers(test, count, prefix) {
  const servers = []
  let seq = 0

  test.before(async () => {
    if (external) return
    for (let i = 0; i < count; i++) servers.push(await startServer({ embedded: true }))
  })

  test.after.always(async () => {
    await Promise.all(servers.map((s) => s.destroy()))
  })

  return {
    servers,
    /** An application_name of its own, so that server-side counts are per test. */
    app: () => `pgdbpool-${prefix}${process.pid}-${++seq}`,
    endpoints: (application_name) => servers.map((s, i) => ({ ...s.endpoint, id: `s${i}`, application_name })),
  }
}

/** Checks out `n` handlers of `group` and holds them. */
async function holdMany(pool, group, n) {
  const handlers = Array.from({ length: n }, () => pool.handler(group))
  await Promise.all(handlers.map((h) => h.acquire()))
  return handlers
}

module.exports = { useServers, holdMany }
