'use strict'
// A script that ends while it still holds handlers, transactions or statements in flight, the
// way a CLI tool, a test file or a migration script that forgot release() ends
// (__test__/teardown.test.js checks its exit status and the server afterwards).
//
// argv[2] is the scenario; the config comes as JSON in PGDBPOOL_CHILD_CONFIG. It prints
// `ready` when set up; scenarios that wait for the parent read `go` on stdin.

const { Worker } = require('node:worker_threads')
const path = require('node:path')
const readline = require('node:readline')

const scenario = process.argv[2]
const config = JSON.parse(process.env.PGDBPOOL_CHILD_CONFIG || '{}')
const app = process.env.PGDBPOOL_CHILD_APP || 'pgdbpool'
const ROOT = path.join(__dirname, '..', '..')

function waitForGo() {
  return new Promise((resolve) => {
    const rl = readline.createInterface({ input: process.stdin })
    rl.on('line', (line) => {
      if (line.trim() === 'go') {
        rl.close()
        // An open stdin pipe would keep the event loop alive.
        process.stdin.destroy()
        resolve()
      }
    })
  })
}

async function main() {
  switch (scenario) {
    case 'loop-end-handler': {
      // The event loop ends with a handler still held (no transaction).
      const lib = require(ROOT)
      await lib.init(config)
      const db = new lib.Handler('default')
      await db.query('SELECT 1')
      console.log('ready')
      return
    }
    case 'loop-end-tx': {
      // The same inside an open transaction.
      const lib = require(ROOT)
      await lib.init(config)
      const db = new lib.Handler('tx')
      await db.query('INSERT INTO teardown_rows (app) VALUES ($1)', [app])
      console.log('ready', db.inTransaction)
      return
    }
    case 'loop-end-never-closed': {
      // A pool that is never closed, idle after a few statements.
      const lib = require(ROOT)
      const pool = new lib.Pool(config)
      await pool.ready
      await pool.query('SELECT 1')
      await pool.withHandler('default', (db) => db.query('SELECT 2'))
      console.log('ready')
      return
    }
    case 'exit-busy': {
      // process.exit() with handlers held, a transaction open and statements in flight.
      const lib = require(ROOT)
      await lib.init(config)
      const tx = new lib.Handler('tx')
      await tx.query('INSERT INTO teardown_rows (app) VALUES ($1)', [app])
      const busy = new lib.Handler('default')
      busy.query('SELECT pg_sleep(30)').catch(() => {})
      lib.query('SELECT pg_sleep(31)').catch(() => {})
      console.log('ready')
      await waitForGo()
      process.exit(0)
      return
    }
    case 'worker-last-env': {
      // The main thread never loads the addon: the worker's environment is the only one, so
      // its teardown is the addon's last. type in argv[3].
      const type = process.argv[3]
      const workerConfig = { ...config, type }
      const source = `
        const { parentPort, workerData } = require('node:worker_threads')
        const lib = require(${JSON.stringify(ROOT)})
        ;(async () => {
          await lib.init(workerData.config)
          const tx = new lib.Handler('tx')
          await tx.query('INSERT INTO teardown_rows (app) VALUES ($1)', [workerData.app])
          const busy = new lib.Handler('default')
          busy.query('SELECT pg_sleep(30)').catch(() => {})
          lib.query('SELECT pg_sleep(31)').catch(() => {})
          parentPort.postMessage('ready')
        })().catch((e) => parentPort.postMessage('error ' + (e && e.stack)))
      `
      const worker = new Worker(source, { eval: true, workerData: { config: workerConfig, app } })
      const message = await new Promise((resolve, reject) => {
        worker.once('message', resolve)
        worker.once('error', reject)
      })
      if (message !== 'ready') throw new Error(String(message))
      console.log('ready')
      await waitForGo()
      const code = await worker.terminate()
      console.log('terminated', code)
      return
    }
    case 'constructor-out-of-range': {
      // A number the native constructor cannot use (it panicked, aborting the process).
      const lib = require(ROOT)
      try {
        new lib.Pool(config)
        console.log(JSON.stringify({ threw: null }))
      } catch (e) {
        console.log(JSON.stringify({ threw: e && e.constructor && e.constructor.name, path: e && e.path, message: String(e && e.message) }))
      }
      return
    }
    default:
      throw new Error(`unknown scenario ${scenario}`)
  }
}

main().catch((e) => {
  console.error('child failed:', e && e.stack)
  process.exitCode = 3
})
