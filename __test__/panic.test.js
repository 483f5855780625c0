'use strict'
// No Rust panic crosses N-API (README "No crash path"): a panic in a synchronous call becomes a
// JS error, a panic in a task settles the promises of the operations it hit, and the pool goes
// on. The panics are provoked through test hooks that exist only with PGDBPOOL_TEST_HOOKS=1.
const test = require('ava')
const path = require('node:path')

const { startServer, guardProcess } = require('./helpers/pg')
const { runNode, jsonLines } = require('./helpers/child')

guardProcess(test)

let server
test.before(async () => {
  server = await startServer()
})
test.after.always(async () => {
  if (server) await server.destroy()
})

test('a panic in the core is an error of the operations it hit, never an abort or a promise left pending', async (t) => {
  const result = await runNode(path.join(__dirname, 'helpers', 'panic-child.js'), [JSON.stringify(server.endpoint)], {
    env: { PGDBPOOL_TEST_HOOKS: '1' },
    timeout: 60000,
  })
  const detail = `code ${result.code}, signal ${result.signal}\n${result.stdout}\n${result.stderr}`
  t.false(result.timedOut, detail)
  t.is(result.signal, null, detail)
  t.is(result.code, 0, detail)
  t.false(/fatal runtime error|Aborted|core dumped/.test(result.stderr), detail)
  // Rust reports each panic on stderr; the only ones are the provoked ones.
  const panics = result.stderr.split('\n').filter((l) => /panicked at/.test(l)).length
  t.is(panics, (result.stderr.match(/test hook: a panic on purpose/g) || []).length, detail)
  const steps = Object.fromEntries(jsonLines(result.stdout).map((s) => [s.step, s]))
  const internal = (s) => {
    t.truthy(s, JSON.stringify(steps))
    if (!s) return
    t.false(s.ok, JSON.stringify(s))
    t.is(s.code, 'INTERNAL', JSON.stringify(s))
    t.regex(s.message, /panic/)
  }
  internal(steps['one-shot panic'])
  t.deepEqual(steps['one-shot after'].rows, [{ v: 2 }])
  const [three, four, five] = steps.batch.results
  t.deepEqual(three.rows, [{ v: 3 }])
  internal(four)
  t.deepEqual(five.rows, [{ v: 5 }])
  t.deepEqual(steps['handler first'].rows, [{ v: 6 }])
  internal(steps['handler panic'])
  // The handler's session is given up (its state is unknown after the panic); the handler says so.
  t.false(steps['handler after'].ok)
  internal(steps['sync panic'])
  t.deepEqual(steps['sync after'].rows, [{ v: 10 }])
  t.deepEqual(steps['handler again'].rows, [{ v: 11 }])
  t.is(steps.stats.inUse, 0)
  t.truthy(steps.closed)
})
