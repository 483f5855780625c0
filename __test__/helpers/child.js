'use strict'
// Runs a Node.js child process and reports how it ended (exit code, signal, output), for the
// tests that need a process of their own: teardown at exit, aborts that would kill the test
// file, memory and GC checks.

const { spawn } = require('node:child_process')
const path = require('node:path')

const ROOT = path.join(__dirname, '..', '..')

/**
 * Starts `node [nodeArgs] script [args]` in the repository root. Resolves when it exits, or
 * kills it after `timeout` ms (then `timedOut` is true). `onLine(line, child)` sees each line of
 * its stdout as it arrives (to answer it on stdin).
 */
function runNode(script, args = [], { env = {}, timeout = 30000, nodeArgs = [], onLine } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...nodeArgs, script, ...args], {
      cwd: ROOT,
      env: { ...process.env, ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    let pending = ''
    let timedOut = false
    child.stdout.on('data', (d) => {
      stdout += d
      pending += d
      let nl
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl)
        pending = pending.slice(nl + 1)
        if (onLine) {
          try {
            onLine(line, child)
          } catch (e) {
            reject(e)
          }
        }
      }
    })
    child.stderr.on('data', (d) => (stderr += d))
    child.stdin.on('error', () => {})
    const timer = setTimeout(() => {
      timedOut = true
      child.kill('SIGKILL')
    }, timeout)
    child.on('error', reject)
    // 'close', not 'exit': the child's last output may still be in the pipes when it exits.
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr, timedOut })
    })
  })
}

/** The JSON documents a child printed, one per line starting with `{`. */
function jsonLines(stdout) {
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l))
}

/** Asserts that a child ended on its own with status 0, without an abort or a Rust panic. */
function assertCleanExit(t, result, what = 'child') {
  const detail = `${what}: code ${result.code}, signal ${result.signal}${result.timedOut ? ' (killed: timed out)' : ''}\n--- stdout\n${result.stdout}\n--- stderr\n${result.stderr}`
  t.false(result.timedOut, detail)
  t.is(result.signal, null, detail)
  t.is(result.code, 0, detail)
  t.false(/panicked|fatal runtime error|Aborted|core dumped/.test(result.stderr), detail)
}

module.exports = { runNode, jsonLines, assertCleanExit, ROOT }
