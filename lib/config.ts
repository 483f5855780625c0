import { X509Certificate, createPrivateKey } from 'node:crypto'
import { readFileSync } from 'node:fs'

import { ConfigError } from './errors'

export type SslMode = 'disable' | 'prefer' | 'require' | 'verify-ca' | 'verify-full'
export type ChannelBinding = 'disable' | 'prefer' | 'require'
export type TargetSessionAttrs = 'any' | 'read-write' | 'read-only' | 'primary' | 'standby' | 'prefer-standby'
export type Balance = 'round-robin' | 'least-busy' | 'random'

/** One PostgreSQL server (the Python pgdbpool's keys, plus `port`, `id` and more). */
export interface EndpointConfig {
  /** Name that groups use in `endpoints`; defaults to `host:port`. */
  id?: string
  host: string
  port?: number
  /** Database name. */
  name: string
  user: string
  pass?: string
  ssl?: SslMode
  /**
   * CA bundle for `verify-ca` / `verify-full` (and `require`, which then checks the chain as
   * libpq does): a PEM file path or PEM text. Without it, the public webpki roots are used.
   */
  ssl_ca?: string
  /** Client certificate (chain) to present: a PEM file path or PEM text; needs `ssl_key`. */
  ssl_cert?: string
  /** The client certificate's private key (unencrypted): a PEM file path or PEM text. */
  ssl_key?: string
  /** SCRAM channel binding to the TLS session (libpq's `channel_binding`). */
  channel_binding?: ChannelBinding
  /** Seconds. */
  connect_timeout?: number
  /** Milliseconds, applied per connection as `statement_timeout` (0 disables). */
  query_timeout?: number
  /** Megabytes, applied per connection as `temp_buffers`. */
  session_tmp_buffer?: number
  application_name?: string
  weight?: number
  /** More startup options, libpq's `options` (e.g. `-c search_path=app`), sent after the pool's own. */
  options?: string
}

export interface GroupConfig {
  connection_count: number
  autocommit?: boolean
  sqlprepare?: boolean
  /** Endpoint ids (or indexes into `db`) serving this group; all endpoints by default. */
  endpoints?: Array<string | number>
  target_session_attrs?: TargetSessionAttrs
  balance?: Balance
  /** Milliseconds a checkout may wait for a free connection. */
  acquire_timeout?: number
  max_waiting?: number
  min_idle?: number
  /** Milliseconds; 0 keeps idle connections forever. */
  idle_timeout?: number
  /** Milliseconds; 0 never replaces a connection for its age. */
  max_lifetime?: number
  /** Checkouts after which a connection is replaced; 0 for unlimited. */
  max_uses?: number
  /** Milliseconds of idleness after which a connection is pinged before hand-out. */
  ping_after_idle?: number
  /** Prepared statements kept per connection; 0 for PgBouncer transaction mode. */
  statement_cache_size?: number
  /** One-shot statements allowed in flight on one connection once all are busy; 1 turns pipelining off. */
  pipeline?: number
  /** Milliseconds a handler may hold a connection before it is reported as a leak (0: off). */
  leak_threshold?: number
  /**
   * Undo what a user changed on a session (settings, role, temp tables, advisory locks, LISTEN,
   * cursors, prepared statements) before the next user gets it; default true.
   */
  reset_on_release?: boolean
}

export interface TypeOptions {
  /** How int8 (bigint) columns arrive: 'string' (pg's default), 'bigint' or 'number'. */
  int8?: 'string' | 'bigint' | 'number'
  /** How date/time columns arrive: Date objects (pg's default) or strings. */
  dates?: 'date' | 'string'
}

export interface Config {
  type?: 'threaded' | 'non-threaded'
  db: EndpointConfig | string | Array<EndpointConfig | string>
  groups: Record<string, GroupConfig>
  types?: TypeOptions
  /** Milliseconds between health-monitor rounds. */
  health_interval?: number
}

export const ENDPOINT_DEFAULTS = {
  port: 5432,
  ssl: 'disable' as SslMode,
  channel_binding: 'prefer' as ChannelBinding,
  connect_timeout: 10,
  query_timeout: 5000,
  session_tmp_buffer: 128,
  application_name: 'pgdbpool',
  weight: 1,
  options: '',
}

export const GROUP_DEFAULTS = {
  autocommit: true,
  sqlprepare: false,
  target_session_attrs: 'any' as TargetSessionAttrs,
  balance: 'round-robin' as Balance,
  acquire_timeout: 10_000,
  max_waiting: 10_000,
  min_idle: 0,
  idle_timeout: 600_000,
  max_lifetime: 3_600_000,
  max_uses: 0,
  ping_after_idle: 10_000,
  statement_cache_size: 256,
  pipeline: 8,
  leak_threshold: 0,
  reset_on_release: true,
}

export interface NormalizedEndpoint extends Required<Omit<EndpointConfig, 'pass' | 'ssl_ca' | 'ssl_cert' | 'ssl_key'>> {
  pass: string | null
  /** PEM text. */
  ssl_ca: string | null
  /** PEM text. */
  ssl_cert: string | null
  /** PEM text. */
  ssl_key: string | null
}

export interface NormalizedGroup extends Required<Omit<GroupConfig, 'endpoints'>> {
  name: string
  endpoints: number[]
}

export interface NormalizedConfig {
  type: 'threaded' | 'non-threaded'
  endpoints: NormalizedEndpoint[]
  groups: NormalizedGroup[]
  types: Required<TypeOptions>
  health_interval: number
}

const SSL_MODES: SslMode[] = ['disable', 'prefer', 'require', 'verify-ca', 'verify-full']
const CHANNEL_BINDINGS: ChannelBinding[] = ['disable', 'prefer', 'require']
const TSA: TargetSessionAttrs[] = ['any', 'read-write', 'read-only', 'primary', 'standby', 'prefer-standby']
const BALANCES: Balance[] = ['round-robin', 'least-busy', 'random']

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function describe(v: unknown): string {
  if (v === null) return 'null'
  if (Array.isArray(v)) return 'an array'
  if (typeof v === 'string') return `a string`
  if (typeof v === 'function') return 'a function'
  return typeof v === 'object' ? 'an object' : `${typeof v} ${String(v)}`
}

function checkKeys(obj: Record<string, unknown>, allowed: readonly string[], path: string) {
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) {
      throw new ConfigError(path ? `${path}.${key}` : key, `unknown key (allowed: ${allowed.join(', ')})`)
    }
  }
}

/** Largest time in milliseconds any key takes: what a JS timer can wait (about 24.8 days). */
export const MAX_MS = 2_147_483_647

/**
 * The range of every number in the configuration (README "Configuration"). Out of range, not
 * a number, or a fraction where an integer is meant: a ConfigError naming the key.
 */
export const RANGES = {
  port: [1, 65535],
  connect_timeout: [0, 2_147_483], // seconds, > 0, fractions allowed
  query_timeout: [0, MAX_MS],
  session_tmp_buffer: [1, 8_388_607], // MB: PostgreSQL's largest temp_buffers
  weight: [1, 1_000_000],
  connection_count: [1, 100_000],
  acquire_timeout: [1, MAX_MS],
  max_waiting: [0, MAX_MS],
  idle_timeout: [0, MAX_MS],
  max_lifetime: [0, MAX_MS],
  max_uses: [0, Number.MAX_SAFE_INTEGER],
  ping_after_idle: [0, MAX_MS],
  statement_cache_size: [0, 10_000],
  pipeline: [1, 1000],
  leak_threshold: [0, MAX_MS],
  health_interval: [10, MAX_MS],
} as const

function integer(v: unknown, path: string, [min, max]: readonly [number, number], fallback?: number): number {
  if (v === undefined && fallback !== undefined) return fallback
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new ConfigError(path, `must be an integer >= ${min} and <= ${max} (got ${describe(v)})`)
  }
  return v
}

/** Seconds, fractions allowed, above the range's low end. */
function seconds(v: unknown, path: string, [min, max]: readonly [number, number], fallback: number): number {
  if (v === undefined) return fallback
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= min || v > max) {
    throw new ConfigError(path, `must be a number of seconds > ${min} and <= ${max} (got ${describe(v)})`)
  }
  return v
}

function string(v: unknown, path: string, fallback?: string): string {
  if (v === undefined && fallback !== undefined) return fallback
  if (typeof v !== 'string' || v.length === 0) throw new ConfigError(path, `must be a non-empty string (got ${describe(v)})`)
  return v
}

function boolean(v: unknown, path: string, fallback: boolean): boolean {
  if (v === undefined) return fallback
  if (typeof v !== 'boolean') throw new ConfigError(path, `must be true or false (got ${describe(v)})`)
  return v
}

function oneOf<T extends string>(v: unknown, path: string, allowed: readonly T[], fallback: T): T {
  if (v === undefined) return fallback
  if (typeof v !== 'string' || !allowed.includes(v as T)) {
    throw new ConfigError(path, `must be one of ${allowed.map((a) => `'${a}'`).join(', ')} (got ${typeof v === 'string' ? `'${v}'` : describe(v)})`)
  }
  return v as T
}

/** The keys each level of the configuration takes; any other key is a ConfigError. */
export const ENDPOINT_KEYS = [
  'id',
  'host',
  'port',
  'name',
  'user',
  'pass',
  'ssl',
  'ssl_ca',
  'ssl_cert',
  'ssl_key',
  'channel_binding',
  'connect_timeout',
  'query_timeout',
  'session_tmp_buffer',
  'application_name',
  'weight',
  'options',
] as const
export const GROUP_KEYS = [
  'connection_count',
  'autocommit',
  'sqlprepare',
  'endpoints',
  'target_session_attrs',
  'balance',
  'acquire_timeout',
  'max_waiting',
  'min_idle',
  'idle_timeout',
  'max_lifetime',
  'max_uses',
  'ping_after_idle',
  'statement_cache_size',
  'pipeline',
  'leak_threshold',
  'reset_on_release',
] as const
export const TOP_KEYS = ['type', 'db', 'groups', 'types', 'health_interval'] as const

/** A percent-decoded part of a URL; a `%` that is not an escape is a ConfigError (never echoed: it may be the password). */
function decodePart(text: string, path: string, what: string): string {
  try {
    return decodeURIComponent(text)
  } catch {
    throw new ConfigError(path, `the URL's ${what} has a % that is not an escape (%XX); write a literal % as %25`)
  }
}

/** Parses `postgres://user:pass@host:port/db?sslmode=...&application_name=...`. */
function endpointFromUrl(url: string, path: string): Record<string, unknown> {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    // The URL may hold a password: never echo it.
    throw new ConfigError(path, 'is not a valid postgres:// URL')
  }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') {
    throw new ConfigError(path, `URL scheme must be postgres:// or postgresql:// (got ${parsed.protocol}//)`)
  }
  const user = decodePart(parsed.username, path, 'user name')
  const out: Record<string, unknown> = {
    host: decodePart(parsed.hostname, path, 'host').replace(/^\[|\]$/g, '') || 'localhost',
    name: decodePart(parsed.pathname.replace(/^\//, ''), path, 'database name') || user,
    user,
  }
  if (parsed.port) out.port = Number(parsed.port)
  if (parsed.password) out.pass = decodePart(parsed.password, path, 'password')
  for (const [key, value] of parsed.searchParams) {
    switch (key) {
      case 'sslmode':
        out.ssl = value
        break
      case 'sslrootcert':
        out.ssl_ca = value
        break
      case 'sslcert':
        out.ssl_cert = value
        break
      case 'sslkey':
        out.ssl_key = value
        break
      case 'channel_binding':
        out.channel_binding = value
        break
      case 'connect_timeout':
        out.connect_timeout = Number(value)
        break
      case 'application_name':
        out.application_name = value
        break
      default:
        throw new ConfigError(
          `${path}?${key}`,
          'unsupported URL parameter (supported: sslmode, sslrootcert, sslcert, sslkey, channel_binding, connect_timeout, application_name)',
        )
    }
  }
  return out
}

/** PEM text given inline, or read from the file `value` names. */
function readPem(value: string, path: string, what: string, secret: boolean): string {
  if (value.includes('-----BEGIN')) return value
  try {
    return readFileSync(value, 'utf8')
  } catch (e) {
    const err = e as NodeJS.ErrnoException
    // A key given inline without its BEGIN line must not be echoed: name the error code only.
    const reason = secret ? (err.code ?? 'unreadable') : err.message
    throw new ConfigError(path, secret ? `cannot read ${what} file (${reason})` : `cannot read ${what} file '${value}': ${reason}`)
  }
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g

/** Checks that `pem` holds at least one certificate and that each one parses. */
function checkCerts(pem: string, path: string): string {
  const blocks = pem.match(PEM_CERT) ?? []
  if (blocks.length === 0) throw new ConfigError(path, 'holds no PEM certificate (-----BEGIN CERTIFICATE-----)')
  blocks.forEach((block, i) => {
    try {
      new X509Certificate(block)
    } catch (e) {
      throw new ConfigError(path, `certificate ${i + 1} is not valid: ${(e as Error).message}`)
    }
  })
  return pem
}

/** Checks that `pem` holds an unencrypted private key, without ever echoing it. */
function checkKey(pem: string, path: string): string {
  if (/-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED/.test(pem)) {
    throw new ConfigError(path, 'is an encrypted private key; give it unencrypted (e.g. openssl pkey -in key.pem -out plain.pem)')
  }
  if (!/-----BEGIN (RSA |EC )?PRIVATE KEY-----/.test(pem)) throw new ConfigError(path, 'holds no PEM private key (-----BEGIN PRIVATE KEY-----)')
  try {
    createPrivateKey(pem)
  } catch (e) {
    throw new ConfigError(path, `is not a valid private key (${(e as NodeJS.ErrnoException).code ?? 'unreadable'})`)
  }
  return pem
}

/** Startup options: a string, without NUL (it travels in the startup packet). */
function optionsText(v: unknown, path: string): string {
  if (typeof v !== 'string' || v.includes('\0')) throw new ConfigError(path, `must be a string of startup options (got ${describe(v)})`)
  return v
}

function normalizeEndpoint(raw: unknown, path: string): NormalizedEndpoint {
  const obj = typeof raw === 'string' ? endpointFromUrl(raw, path) : raw
  if (!isPlainObject(obj)) throw new ConfigError(path, `must be an endpoint object or a postgres:// URL (got ${describe(raw)})`)
  checkKeys(obj, ENDPOINT_KEYS, path)
  const host = string(obj.host, `${path}.host`)
  const port = integer(obj.port, `${path}.port`, RANGES.port, ENDPOINT_DEFAULTS.port)
  // libpq's sslrootcert=system: the public roots, and verify-full unless said otherwise.
  const systemRoots = obj.ssl_ca === 'system'
  const ssl = oneOf(obj.ssl, `${path}.ssl`, SSL_MODES, systemRoots ? 'verify-full' : ENDPOINT_DEFAULTS.ssl)
  if (obj.pass !== undefined && typeof obj.pass !== 'string') throw new ConfigError(`${path}.pass`, 'must be a string')
  let sslCa: string | null = null
  if (systemRoots) {
    if (ssl !== 'verify-full') throw new ConfigError(`${path}.ssl_ca`, `'system' (the public roots) needs ssl 'verify-full', as in libpq (got '${ssl}')`)
  } else if (obj.ssl_ca !== undefined) {
    sslCa = checkCerts(readPem(string(obj.ssl_ca, `${path}.ssl_ca`), `${path}.ssl_ca`, 'CA', false), `${path}.ssl_ca`)
  } else if (ssl === 'verify-ca') {
    // libpq refuses verify-ca without a root certificate: a chain check against any public CA
    // without the host name check would accept the certificate of any site.
    throw new ConfigError(
      `${path}.ssl_ca`,
      "is required with ssl 'verify-ca' (as in libpq); use ssl 'verify-full' to check the server against the public roots",
    )
  }
  if ((obj.ssl_cert === undefined) !== (obj.ssl_key === undefined)) {
    const missing = obj.ssl_cert === undefined ? 'ssl_cert' : 'ssl_key'
    throw new ConfigError(`${path}.${missing}`, 'is required when ssl_cert / ssl_key is set (a client certificate needs both)')
  }
  let sslCert: string | null = null
  let sslKey: string | null = null
  if (obj.ssl_cert !== undefined) {
    sslCert = checkCerts(readPem(string(obj.ssl_cert, `${path}.ssl_cert`), `${path}.ssl_cert`, 'certificate', false), `${path}.ssl_cert`)
    sslKey = checkKey(readPem(string(obj.ssl_key, `${path}.ssl_key`), `${path}.ssl_key`, 'key', true), `${path}.ssl_key`)
  }
  return {
    id: obj.id === undefined ? `${host}:${port}` : string(obj.id, `${path}.id`),
    host,
    port,
    name: string(obj.name, `${path}.name`),
    user: string(obj.user, `${path}.user`),
    pass: (obj.pass as string | undefined) ?? null,
    ssl,
    ssl_ca: sslCa,
    ssl_cert: sslCert,
    ssl_key: sslKey,
    channel_binding: oneOf(obj.channel_binding, `${path}.channel_binding`, CHANNEL_BINDINGS, ENDPOINT_DEFAULTS.channel_binding),
    connect_timeout: seconds(obj.connect_timeout, `${path}.connect_timeout`, RANGES.connect_timeout, ENDPOINT_DEFAULTS.connect_timeout),
    query_timeout: integer(obj.query_timeout, `${path}.query_timeout`, RANGES.query_timeout, ENDPOINT_DEFAULTS.query_timeout),
    session_tmp_buffer: integer(obj.session_tmp_buffer, `${path}.session_tmp_buffer`, RANGES.session_tmp_buffer, ENDPOINT_DEFAULTS.session_tmp_buffer),
    application_name: string(obj.application_name, `${path}.application_name`, ENDPOINT_DEFAULTS.application_name),
    weight: integer(obj.weight, `${path}.weight`, RANGES.weight, ENDPOINT_DEFAULTS.weight),
    options: obj.options === undefined ? ENDPOINT_DEFAULTS.options : optionsText(obj.options, `${path}.options`),
  }
}

function normalizeGroup(name: string, raw: unknown, endpoints: NormalizedEndpoint[]): NormalizedGroup {
  const path = `groups.${name}`
  if (!isPlainObject(raw)) throw new ConfigError(path, `must be an object (got ${describe(raw)})`)
  checkKeys(raw, GROUP_KEYS, path)
  if (raw.connection_count === undefined) throw new ConfigError(`${path}.connection_count`, 'is required')
  const connectionCount = integer(raw.connection_count, `${path}.connection_count`, RANGES.connection_count)
  let endpointIndexes: number[]
  if (raw.endpoints === undefined) {
    endpointIndexes = endpoints.map((_, i) => i)
  } else {
    if (!Array.isArray(raw.endpoints) || raw.endpoints.length === 0) {
      throw new ConfigError(`${path}.endpoints`, `must be a non-empty array of endpoint ids (got ${describe(raw.endpoints)})`)
    }
    endpointIndexes = raw.endpoints.map((ref: unknown, i: number) => {
      const index =
        typeof ref === 'number' ? (Number.isInteger(ref) && ref >= 0 && ref < endpoints.length ? ref : -1) : endpoints.findIndex((e) => e.id === ref)
      if (index < 0) {
        const shown = typeof ref === 'string' ? JSON.stringify(ref) : typeof ref === 'number' ? String(ref) : describe(ref)
        throw new ConfigError(`${path}.endpoints[${i}]`, `names no configured endpoint: ${shown} (endpoints: ${endpoints.map((e) => e.id).join(', ')})`)
      }
      return index
    })
  }
  const minIdle = integer(raw.min_idle, `${path}.min_idle`, [0, RANGES.connection_count[1]], GROUP_DEFAULTS.min_idle)
  if (minIdle > connectionCount) throw new ConfigError(`${path}.min_idle`, `must be <= connection_count (${connectionCount})`)
  return {
    name,
    connection_count: connectionCount,
    autocommit: boolean(raw.autocommit, `${path}.autocommit`, GROUP_DEFAULTS.autocommit),
    sqlprepare: boolean(raw.sqlprepare, `${path}.sqlprepare`, GROUP_DEFAULTS.sqlprepare),
    endpoints: [...new Set(endpointIndexes)],
    target_session_attrs: oneOf(raw.target_session_attrs, `${path}.target_session_attrs`, TSA, GROUP_DEFAULTS.target_session_attrs),
    balance: oneOf(raw.balance, `${path}.balance`, BALANCES, GROUP_DEFAULTS.balance),
    acquire_timeout: integer(raw.acquire_timeout, `${path}.acquire_timeout`, RANGES.acquire_timeout, GROUP_DEFAULTS.acquire_timeout),
    max_waiting: integer(raw.max_waiting, `${path}.max_waiting`, RANGES.max_waiting, GROUP_DEFAULTS.max_waiting),
    min_idle: minIdle,
    idle_timeout: integer(raw.idle_timeout, `${path}.idle_timeout`, RANGES.idle_timeout, GROUP_DEFAULTS.idle_timeout),
    max_lifetime: integer(raw.max_lifetime, `${path}.max_lifetime`, RANGES.max_lifetime, GROUP_DEFAULTS.max_lifetime),
    max_uses: integer(raw.max_uses, `${path}.max_uses`, RANGES.max_uses, GROUP_DEFAULTS.max_uses),
    ping_after_idle: integer(raw.ping_after_idle, `${path}.ping_after_idle`, RANGES.ping_after_idle, GROUP_DEFAULTS.ping_after_idle),
    statement_cache_size: integer(raw.statement_cache_size, `${path}.statement_cache_size`, RANGES.statement_cache_size, GROUP_DEFAULTS.statement_cache_size),
    pipeline: integer(raw.pipeline, `${path}.pipeline`, RANGES.pipeline, GROUP_DEFAULTS.pipeline),
    leak_threshold: integer(raw.leak_threshold, `${path}.leak_threshold`, RANGES.leak_threshold, GROUP_DEFAULTS.leak_threshold),
    reset_on_release: boolean(raw.reset_on_release, `${path}.reset_on_release`, GROUP_DEFAULTS.reset_on_release),
  }
}

/**
 * Validates the whole configuration and returns a fully-defaulted copy; the input is never
 * mutated. Throws `ConfigError` naming the first bad key path.
 */
export function normalizeConfig(config: unknown): NormalizedConfig {
  if (!isPlainObject(config)) throw new ConfigError('', `config must be an object (got ${describe(config)})`)
  checkKeys(config, TOP_KEYS, '')
  const type = oneOf(config.type, 'type', ['threaded', 'non-threaded'] as const, 'threaded')
  if (config.db === undefined) throw new ConfigError('db', 'is required')
  const dbList = Array.isArray(config.db) ? config.db : [config.db]
  if (dbList.length === 0) throw new ConfigError('db', 'must name at least one endpoint')
  const endpoints = dbList.map((e, i) => normalizeEndpoint(e, Array.isArray(config.db) ? `db[${i}]` : 'db'))
  const seen = new Set<string>()
  endpoints.forEach((e, i) => {
    if (seen.has(e.id)) throw new ConfigError(`db[${i}].id`, `duplicate endpoint id '${e.id}' (set distinct ids)`)
    seen.add(e.id)
  })
  if (!isPlainObject(config.groups)) throw new ConfigError('groups', `must be an object of named groups (got ${describe(config.groups)})`)
  const names = Object.keys(config.groups)
  if (names.length === 0) throw new ConfigError('groups', 'must define at least one group')
  const groups = names.map((name) => normalizeGroup(name, (config.groups as Record<string, unknown>)[name], endpoints))
  let types: Required<TypeOptions> = { int8: 'string', dates: 'date' }
  if (config.types !== undefined) {
    if (!isPlainObject(config.types)) throw new ConfigError('types', `must be an object (got ${describe(config.types)})`)
    checkKeys(config.types, ['int8', 'dates'], 'types')
    types = {
      int8: oneOf(config.types.int8, 'types.int8', ['string', 'bigint', 'number'] as const, 'string'),
      dates: oneOf(config.types.dates, 'types.dates', ['date', 'string'] as const, 'date'),
    }
  }
  return {
    type,
    endpoints,
    groups,
    types,
    health_interval: integer(config.health_interval, 'health_interval', RANGES.health_interval, 1000),
  }
}

/** The JSON the native core reads: endpoints and groups only, in a fixed key order. */
export function nativeConfigJson(config: NormalizedConfig): string {
  // Leak detection happens in JS; the core does not know the key.
  const groups = config.groups.map(({ leak_threshold: _, ...group }) => group)
  return JSON.stringify({ endpoints: config.endpoints, groups, health_interval: config.health_interval })
}
