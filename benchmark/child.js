'use strict'
// Runs every benchmark cell for one library in this process, so that event-loop time and
// RSS belong to that library alone. Reports JSON lines on stdout, progress on stderr.

const { performance } = require('node:perf_hooks')
const { libs } = require('./libs')

const [, , libName, endpointJson, cellsJson, durationMs, idleMs] = process.argv
const endpoint = JSON.parse(endpointJson)
const cells = JSON.parse(cellsJson)
const duration = Number(durationMs)

function percentile(sorted, p) {
  if (sorted.length === 0) return 0
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]
}

async function runCell(lib, workload, concurrency) {
  const op = lib[workload]
  // Warm-up: fill the pool and the statement caches.
  const warmUntil = Date.now() + Math.min(500, duration / 4)
  await Promise.all(
    Array.from({ length: Math.min(concurrency, 64) }, async () => {
      while (Date.now() < warmUntil) await op()
    }),
  )
  if (global.gc) global.gc()
  const latencies = []
  let ops = 0
  let errors = 0
  let peakRss = process.memoryUsage.rss()
  const rssTimer = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage.rss())), 50)
  const elu0 = performance.eventLoopUtilization()
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  const deadline = t0 + duration
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < deadline) {
        const s = performance.now()
        try {
          await op()
          ops++
          if (latencies.length < 200000) latencies.push(performance.now() - s)
        } catch (e) {
          errors++
          if (errors === 1) process.stderr.write(`  ${lib.name} ${workload}: ${e.message}\n`)
        }
      }
    }),
  )
  const elapsed = performance.now() - t0
  const elu = performance.eventLoopUtilization(elu0)
  const cpu = process.cpuUsage(cpu0)
  clearInterval(rssTimer)
  peakRss = Math.max(peakRss, process.memoryUsage.rss())
  latencies.sort((a, b) => a - b)
  return {
    lib: lib.name,
    workload,
    concurrency,
    ops,
    errors,
    qps: ops / (elapsed / 1000),
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    // Event-loop busy time per operation, in microseconds.
    eluUs: ops ? (elu.active * 1000) / ops : 0,
    // CPU time of the whole process (every thread: JS, a native core's workers) per operation.
    cpuUs: ops ? (cpu.user + cpu.system) / ops : 0,
    peakRssMb: peakRss / 1048576,
  }
}

/**
 * CPU the process uses with its pool open and nothing to do (after the load stopped, and a
 * second for what it left running to wind down), as a percentage of one core.
 */
async function idleCpu(lib, ms) {
  await new Promise((r) => setTimeout(r, 1000))
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  await new Promise((r) => setTimeout(r, ms))
  const cpu = process.cpuUsage(cpu0)
  const elapsedMs = performance.now() - t0
  return { lib: lib.name, workload: 'idle', idleMs: elapsedMs, idleCpuPercent: ((cpu.user + cpu.system) / 1000 / elapsedMs) * 100 }
}

;(async () => {
  const lib = await libs[libName](endpoint)
  for (const [workload, concurrency] of cells) {
    const result = await runCell(lib, workload, concurrency)
    process.stdout.write(JSON.stringify(result) + '\n')
  }
  if (Number(idleMs) > 0) process.stdout.write(JSON.stringify(await idleCpu(lib, Number(idleMs))) + '\n')
  await lib.close()
})().catch((e) => {
  process.stderr.write(`${libName} failed: ${e && e.stack}\n`)
  process.exit(1)
})
