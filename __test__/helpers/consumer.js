'use strict'
// A library that needs Node 22+ (pg-boss, graphile-worker), tried on pgdbpool/pg: a test file gets
// a server of its own, and its test runs a child script (helpers/*-child.mjs, written with
// helpers/consumer-child.mjs) under Node 24 against it and checks the child's JSON report.

const path = require('node:path')

const { startServer, guardProcess } = require('./pg')
const { runNode24 } = require('./node24')

/**
 * Registers a test named `title` that runs helpers/`script` with the server's URL in
 * `urlVariable` and hands its report to `check(t, report)`, once the child exited cleanly.
 */
function consumerTest(test, title, { script, urlVariable }, check) {
  guardProcess(test)

  let server

  test.before(async () => {
    server = await startServer()
  })

  test.after.always(async () => {
    if (server) await server.destroy()
  })

  test(title, async (t) => {
    const run = await runNode24(path.join(__dirname, script), { env: { [urlVariable]: server.url }, timeout: 90_000 })
    const line = run.stdout.trim().split('\n').pop()
    let out
    try {
      out = JSON.parse(line)
    } catch {
      t.fail(`no result from the child (code ${run.code}, signal ${run.signal}):\n${run.stdout}\n${run.stderr}`)
      return
    }
    t.is(run.code, 0, `${out.failure ?? ''}\n${run.stderr}`)
    check(t, out)
  })
}

module.exports = { consumerTest }
