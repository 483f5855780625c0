'use strict'
// Fuzzes the configuration validator in a process of its own (an abort must not take the test
// runner with it): random values of every JS type for every key, endpoint objects and URLs.
// Every `new Pool(config)` must either throw a ConfigError or give a pool that closes; anything
// else is reported. Prints one JSON summary line.

const path = require('node:path')
const lib = require(path.join(__dirname, '..', '..'))

const seed = Number(process.argv[2] || 1)
const iterations = Number(process.argv[3] || 2000)
const closedPort = Number(process.argv[4] || 1)

// mulberry32: a small seeded PRNG, so a failure can be replayed with its seed.
let state = seed >>> 0
function random() {
  state = (state + 0x6d2b79f5) >>> 0
  let t = state
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}
const int = (n) => Math.floor(random() * n)
const pick = (list) => list[int(list.length)]

const NUMBERS = [
  0,
  -0,
  1,
  -1,
  2,
  7,
  10,
  255,
  256,
  1000,
  65535,
  65536,
  0.5,
  1.5,
  -2.5,
  1e-9,
  1e3,
  1e9,
  2 ** 31 - 1,
  2 ** 31,
  2 ** 32,
  2 ** 53 - 1,
  2 ** 53,
  2 ** 64,
  1e20,
  1e308,
  Number.MAX_VALUE,
  Number.MIN_VALUE,
  NaN,
  Infinity,
  -Infinity,
  -1e20,
]
const STRINGS = [
  '',
  ' ',
  'a',
  'x'.repeat(300),
  '0',
  '10',
  '-1',
  '1e20',
  'NaN',
  'true',
  'null',
  '%',
  '%zz',
  'a\u0000b',
  '\u{1F600}',
  'disable',
  'prefer',
  'require',
  'verify-ca',
  'verify-full',
  'threaded',
  'non-threaded',
  'any',
  'read-write',
  'random',
  'round-robin',
  'string',
  'bigint',
  'number',
  'date',
  '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----',
  '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----',
  '/nonexistent/file.pem',
  '__proto__',
  'constructor',
]

function randomString() {
  if (random() < 0.7) return pick(STRINGS)
  const n = int(20)
  let s = ''
  for (let i = 0; i < n; i++) s += String.fromCharCode(int(random() < 0.9 ? 128 : 0xffff))
  return s
}

function randomValue(depth = 0) {
  switch (int(depth > 1 ? 9 : 12)) {
    case 0:
      return undefined
    case 1:
      return null
    case 2:
      return random() < 0.5
    case 3:
    case 4:
      return pick(NUMBERS)
    case 5:
      return int(100000) - 1000
    case 6:
    case 7:
      return randomString()
    case 8:
      return pick([1n, -1n, 2n ** 70n, Symbol('s'), () => 1, new Date(NaN), new Date(0), /re/, new Map(), new Set([1])])
    case 9:
      return Array.from({ length: int(4) }, () => randomValue(depth + 1))
    case 10: {
      const o = {}
      for (let i = int(4); i > 0; i--) o[randomString()] = randomValue(depth + 1)
      return o
    }
    default:
      return Object.create(null)
  }
}

// Every key the validator knows (a key it does not know is only one more random string).
const { ENDPOINT_KEYS, GROUP_KEYS, TOP_KEYS } = require(path.join(__dirname, '..', '..', 'dist', 'lib', 'config'))
const URL_PARAMS = ['sslmode', 'sslrootcert', 'sslcert', 'sslkey', 'channel_binding', 'connect_timeout', 'application_name', 'port', 'bogus']
// Host names that need no DNS (there is no network here): a random name would only be slow.
const HOSTS = ['127.0.0.1', 'localhost', '::1', '[::1]', '', '/tmp', '127.0.0.1 ', 'a\u0000b']

function baseConfig() {
  return {
    type: 'non-threaded',
    db: { host: '127.0.0.1', port: closedPort, name: 'db', user: 'u', pass: 'fuzz-secret-pw', connect_timeout: 1 },
    groups: { default: { connection_count: 1, acquire_timeout: 200 } },
    health_interval: 1000000,
  }
}

function mutate(config) {
  const where = int(4)
  const settable = (o) => o !== null && typeof o === 'object' && Object.isExtensible(o)
  if (where === 0 && settable(config.db)) {
    const key = pick(ENDPOINT_KEYS)
    config.db[key] = key === 'host' && random() < 0.8 ? pick(HOSTS) : randomValue()
  } else if (where === 1 && settable(config.groups) && settable(config.groups.default)) {
    config.groups.default[pick(GROUP_KEYS)] = randomValue()
  } else if (where <= 2) {
    const key = random() < 0.9 ? pick(TOP_KEYS) : randomString()
    config[key] = randomValue()
  } else {
    // A URL with random parameters (and maybe a broken password escape).
    const pass = pick(['fuzz-secret-pw', 'fuzz%zzsecret', 'fuzz%', 'fuzz%41', 'fu:zz'])
    // (encodeURIComponent throws on a lone surrogate: such a value is sent raw.)
    const encode = (v) => {
      try {
        return encodeURIComponent(v)
      } catch {
        return v
      }
    }
    const params = Array.from({ length: int(3) }, () => `${pick(URL_PARAMS)}=${encode(String(random() < 0.5 ? pick(NUMBERS) : randomString()))}`)
    config.db = `postgres://u:${pass}@127.0.0.1:${closedPort}/db${params.length ? '?' + params.join('&') : ''}`
  }
}

const report = { seed, iterations, configErrors: 0, pools: 0, bad: [] }
const pools = []

;(async () => {
  for (let i = 0; i < iterations; i++) {
    const config = baseConfig()
    for (let m = 1 + int(3); m > 0; m--) mutate(config)
    let pool
    try {
      pool = new lib.Pool(config)
    } catch (e) {
      if (e instanceof lib.ConfigError && typeof e.path === 'string' && !String(e.message).includes('fuzz-secret')) {
        report.configErrors++
      } else {
        report.bad.push({
          i,
          error: `${e && e.constructor && e.constructor.name}: ${e && e.message}`,
          config: String(require('node:util').inspect(config, { depth: 4 })).slice(0, 600),
        })
      }
      continue
    }
    report.pools++
    pool.ready.catch(() => {})
    pools.push(pool.close({ timeout: 0 }))
    if (pools.length >= 50) await Promise.all(pools.splice(0))
  }
  await Promise.all(pools)
  console.log(JSON.stringify(report))
})().catch((e) => {
  console.error('fuzz child failed', e && e.stack)
  process.exitCode = 3
})
