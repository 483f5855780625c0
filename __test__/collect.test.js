'use strict'
// Pools are collectable (README "No crash path"): nothing keeps a closed pool alive, so 1000
// pools created and closed in a row are all collected (a FinalizationRegistry sees each one)
// and memory stays flat.
const test = require('ava')
const path = require('node:path')

const { startServer, guardProcess } = require('./helpers/pg')
const { runNode, jsonLines, assertCleanExit } = require('./helpers/child')

guardProcess(test)

let server
test.before(async () => {
  server = await startServer()
})
test.after.always(async () => {
  if (server) await server.destroy()
})

test('1000 pools created and closed: every one collected, memory flat', async (t) => {
  const result = await runNode(path.join(__dirname, 'helpers', 'collect-child.js'), [JSON.stringify(server.endpoint), '1000'], {
    nodeArgs: ['--expose-gc'],
    timeout: 110000,
  })
  assertCleanExit(t, result)
  const [report] = jsonLines(result.stdout)
  t.truthy(report, result.stdout)
  // All of them once the last is closed (a few may wait for a late finalizer).
  t.true(report.collected >= 995, `collected ${report.collected} of ${report.count}`)
  const first = report.memory[1]
  const last = report.memory[report.memory.length - 1]
  const mb = (n) => (n / 1048576).toFixed(1)
  // From the 200th pool to the 1000th: the JS heap and the process stay flat.
  t.true(last.heapUsed - first.heapUsed < 8 * 1048576, `heap ${mb(first.heapUsed)} -> ${mb(last.heapUsed)} MiB`)
  t.true(last.rss - first.rss < 64 * 1048576, `rss ${mb(first.rss)} -> ${mb(last.rss)} MiB`)
  // Pools collected along the way, not only at the end.
  t.true(report.memory[4].collected >= 400, JSON.stringify(report.memory))
})
