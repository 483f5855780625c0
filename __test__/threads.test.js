'use strict'
const test = require('ava')
const path = require('node:path')
const { Worker } = require('node:worker_threads')
const { spawn } = require('node:child_process')

const { startServer, guardProcess } = require('./helpers/pg')

guardProcess(test)

let server
let seq = 0
test.before(async () => {
  server = await startServer()
})
test.after.always(async () => {
  if (server) await server.destroy()
})

function runWorkers(n, workerData) {
  return Promise.all(
    Array.from({ length: n }, () => {
      const w = new Worker(path.join(__dirname, 'helpers', 'worker.js'), { workerData })
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          w.terminate()
          reject(new Error('worker timed out'))
        }, 60000)
        w.once('message', (m) => {
          clearTimeout(timer)
          m.ok ? resolve(m) : reject(new Error(m.error))
        })
        w.once('error', reject)
      })
    }),
  )
}

async function sampleSessions(app, until) {
  let max = 0
  let done = false
  until.finally(() => (done = true))
  while (!done) {
    max = Math.max(max, await server.sessions(app))
    await new Promise((r) => setTimeout(r, 20))
  }
  return max
}

test.serial('threaded: worker threads share one pool; the server sees at most connection_count sessions', async (t) => {
  const app = `pgdbpool-thr${++seq}`
  const config = { type: 'threaded', db: { ...server.endpoint, application_name: app }, groups: { default: { connection_count: 3, acquire_timeout: 30000 } } }
  const run = runWorkers(4, { config, hold: 3, rounds: 5 })
  const [results, maxSessions] = await Promise.all([run, sampleSessions(app, run)])
  t.true(maxSessions >= 1)
  t.true(maxSessions <= 3, `server saw ${maxSessions} sessions`)
  t.true(
    results.some((r) => r.users > 1),
    `users seen: ${results.map((r) => r.users)}`,
  )
})

test.serial('non-threaded: each worker thread has its own pool', async (t) => {
  const app = `pgdbpool-nthr${++seq}`
  const config = {
    type: 'non-threaded',
    db: { ...server.endpoint, application_name: app },
    groups: { default: { connection_count: 2, acquire_timeout: 30000 } },
  }
  const run = runWorkers(3, { config, hold: 2, rounds: 6 })
  const [results, maxSessions] = await Promise.all([run, sampleSessions(app, run)])
  t.true(maxSessions > 2, `server saw ${maxSessions} sessions`)
  t.true(maxSessions <= 6)
  t.true(results.every((r) => r.users === 1))
})

function runChild(source) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', source], { cwd: path.join(__dirname, '..'), stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (out += d))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`child did not exit within 20 s: ${out}`))
    }, 20000)
    // 'close': the output is complete only once the pipes are.
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, out })
    })
  })
}

test('the process exits on its own when the pool is idle, and when it is closed', async (t) => {
  const config = JSON.stringify({ db: server.endpoint, groups: { default: { connection_count: 2 } } })
  const idle = await runChild(
    `const l = require('.'); l.init(${config}).then(() => l.query('SELECT 1 AS x')).then((r) => console.log('rows', JSON.stringify(r.rows)))`,
  )
  t.is(idle.code, 0, idle.out)
  t.regex(idle.out, /rows \[\{"x":1\}\]/)
  const closed = await runChild(
    `const l = require('.'); l.init(${config}).then(() => l.query('SELECT 1')).then(() => l.close()).then(() => console.log('closed'))`,
  )
  t.is(closed.code, 0, closed.out)
  t.regex(closed.out, /closed/)
})
