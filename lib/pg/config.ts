// node-postgres's connection and pool settings, mapped onto a pgdbpool configuration of one
// endpoint and one group ('default').

import type { Config, EndpointConfig, GroupConfig, SslMode } from '../config'
import { ConfigError } from '../errors'
import { defaults } from './defaults'

/** The pg keys `pgdbpool/pg` reads (pg.Pool and pg.Client settings). */
export interface PgConfig {
  connectionString?: string
  host?: string
  port?: number | string
  user?: string
  password?: string | (() => string | Promise<string>)
  database?: string
  ssl?: boolean | { rejectUnauthorized?: boolean; ca?: string | Buffer | Array<string | Buffer>; cert?: string | Buffer; key?: string | Buffer }
  application_name?: string
  fallback_application_name?: string
  options?: string
  statement_timeout?: number | false
  query_timeout?: number | false
  lock_timeout?: number | false
  idle_in_transaction_session_timeout?: number | false
  connectionTimeoutMillis?: number
  idleTimeoutMillis?: number
  max?: number
  min?: number
  maxUses?: number
  maxLifetimeSeconds?: number
  keepAlive?: boolean
  keepAliveInitialDelayMillis?: number
  allowExitOnIdle?: boolean
  types?: unknown
  /** Not pg's: reset session state between users (pgdbpool's `reset_on_release`); default false, as pg never resets. */
  resetOnRelease?: boolean
  [key: string]: unknown
}

/** How long a checkout may wait when pg's `connectionTimeoutMillis` is 0 (pg: forever). */
export const NO_TIMEOUT = 24 * 3600 * 1000

function env(name: string): string | undefined {
  try {
    const v = process.env[name]
    return v === '' ? undefined : v
  } catch {
    return undefined
  }
}

/** The settings a `postgres://` URL (pg-connection-string's format) carries. */
function fromUrl(text: string): Partial<PgConfig> & { sslmode?: string } {
  // `socket:/path?db=x` and bare paths are pg-connection-string's too; the common form is a URL.
  if (text.startsWith('/')) return { host: text }
  let url: URL
  try {
    url = new URL(text)
  } catch {
    throw new ConfigError('connectionString', 'is not a valid postgres:// URL')
  }
  const out: Partial<PgConfig> & { sslmode?: string } = {}
  if (url.username) out.user = decodeURIComponent(url.username)
  if (url.password) out.password = decodeURIComponent(url.password)
  if (url.hostname) out.host = decodeURIComponent(url.hostname).replace(/^\[|\]$/g, '')
  if (url.port) out.port = Number(url.port)
  const db = decodeURIComponent(url.pathname.replace(/^\//, ''))
  if (db) out.database = db
  for (const [key, value] of url.searchParams) {
    switch (key) {
      case 'host':
        out.host = value
        break
      case 'sslmode':
        out.sslmode = value
        break
      case 'ssl':
        if (value === 'true' || value === '1') out.ssl = true
        if (value === 'false' || value === '0') out.ssl = false
        break
      case 'application_name':
      case 'options':
      case 'fallback_application_name':
        out[key] = value
        break
      case 'connect_timeout':
        out.connectionTimeoutMillis = Number(value) * 1000
        break
      default:
        // Other parameters (sslcert, sslkey, ...) are not mapped; they are ignored as pg ignores unknown ones.
        break
    }
  }
  return out
}

function sslMode(ssl: PgConfig['ssl'], sslmode: string | undefined): { ssl: SslMode; ssl_ca?: string; ssl_cert?: string; ssl_key?: string } {
  if (sslmode !== undefined) {
    switch (sslmode) {
      case 'disable':
        return { ssl: 'disable' }
      case 'prefer':
      case 'allow':
        return { ssl: 'prefer' }
      case 'require':
      case 'no-verify':
        return { ssl: 'require' }
      case 'verify-ca':
        return { ssl: 'verify-ca' }
      case 'verify-full':
        return { ssl: 'verify-full' }
      default:
        throw new ConfigError('connectionString?sslmode', `unsupported sslmode '${sslmode}'`)
    }
  }
  if (ssl === undefined || ssl === false || ssl === null) return { ssl: 'disable' }
  if (ssl === true) return { ssl: 'verify-full' }
  if (typeof ssl !== 'object') throw new ConfigError('ssl', 'must be true, false or an object of TLS options')
  const text = (v: unknown): string | undefined => (v === undefined ? undefined : Array.isArray(v) ? v.map(String).join('\n') : String(v))
  const out: { ssl: SslMode; ssl_ca?: string; ssl_cert?: string; ssl_key?: string } = { ssl: ssl.rejectUnauthorized === false ? 'require' : 'verify-full' }
  const ca = text(ssl.ca)
  if (ca !== undefined) out.ssl_ca = ca
  if (ssl.cert !== undefined && ssl.key !== undefined) {
    out.ssl_cert = text(ssl.cert)
    out.ssl_key = text(ssl.key)
  }
  return out
}

function millis(v: unknown, path: string): number | undefined {
  if (v === undefined || v === null || v === false) return undefined
  const n = typeof v === 'string' ? Number(v) : v
  if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) throw new ConfigError(path, `must be a number of milliseconds >= 0 (got ${String(v)})`)
  return Math.floor(n)
}

/**
 * The pgdbpool configuration for pg settings `o` (connection string first, then the keys, then
 * the PG* environment variables and pg's `defaults`, as pg resolves them); `password` is the
 * password already resolved (pg allows a function).
 */
export function toPoolConfig(o: PgConfig, password: string | undefined, standalone = false): Config {
  const url = typeof o.connectionString === 'string' ? fromUrl(o.connectionString) : {}
  const pick = <T>(key: keyof PgConfig, envName?: string): T | undefined => {
    const fromUrlValue = (url as Record<string, unknown>)[key as string]
    if (fromUrlValue !== undefined) return fromUrlValue as T
    if (o[key] !== undefined && o[key] !== null) return o[key] as T
    const e = envName ? env(envName) : undefined
    if (e !== undefined) return e as T
    const d = defaults[key as string]
    return d === null ? undefined : (d as T)
  }
  const user = pick<string>('user', 'PGUSER') ?? 'postgres'
  const host = pick<string>('host', 'PGHOST') ?? 'localhost'
  const port = Number(pick<number | string>('port', 'PGPORT') ?? 5432)
  const database = pick<string>('database', 'PGDATABASE') ?? user
  const tls = sslMode(
    o.ssl ?? (url.ssl as PgConfig['ssl']) ?? (defaults.ssl as PgConfig['ssl']),
    url.sslmode ?? (o.ssl === undefined ? env('PGSSLMODE') : undefined),
  )
  const connectMs = millis(url.connectionTimeoutMillis ?? o.connectionTimeoutMillis, 'connectionTimeoutMillis') ?? 0
  const statementTimeout = millis(o.statement_timeout ?? defaults.statement_timeout, 'statement_timeout')
  const queryTimeout = millis(o.query_timeout ?? defaults.query_timeout, 'query_timeout')
  const startup: string[] = []
  const extra = pick<string>('options')
  if (extra) startup.push(extra)
  const lock = millis(o.lock_timeout ?? defaults.lock_timeout, 'lock_timeout')
  if (lock !== undefined) startup.push(`-c lock_timeout=${lock}`)
  const idleTx = millis(o.idle_in_transaction_session_timeout ?? defaults.idle_in_transaction_session_timeout, 'idle_in_transaction_session_timeout')
  if (idleTx !== undefined) startup.push(`-c idle_in_transaction_session_timeout=${idleTx}`)
  const endpoint: EndpointConfig = {
    host,
    port,
    name: database,
    user,
    ...tls,
    connect_timeout: connectMs > 0 ? Math.max(connectMs / 1000, 0.001) : 10,
    // pg has no timeout unless one is set; statement_timeout is the server's, query_timeout pg's
    // client-side one (here both the server's and a client-side check).
    query_timeout: statementTimeout ?? queryTimeout ?? 0,
    application_name: pick<string>('application_name') ?? pick<string>('fallback_application_name') ?? 'pgdbpool',
    options: startup.join(' '),
  }
  const pass = (typeof url.password === 'string' ? url.password : undefined) ?? password ?? env('PGPASSWORD')
  if (pass !== undefined) endpoint.pass = pass
  const max = o.max ?? 10
  if (!Number.isInteger(max) || max < 1) throw new ConfigError('max', `must be an integer >= 1 (got ${String(o.max)})`)
  const group: GroupConfig = {
    connection_count: standalone ? 100 : max,
    min_idle: standalone ? 0 : Math.min(o.min ?? 0, max),
    idle_timeout: standalone ? 1000 : (millis(o.idleTimeoutMillis, 'idleTimeoutMillis') ?? 10_000),
    acquire_timeout: connectMs > 0 ? connectMs : NO_TIMEOUT,
    max_uses: o.maxUses !== undefined && Number.isFinite(o.maxUses) && o.maxUses > 0 ? Math.floor(o.maxUses) : 0,
    max_lifetime: o.maxLifetimeSeconds !== undefined && o.maxLifetimeSeconds > 0 ? Math.floor(o.maxLifetimeSeconds * 1000) : 0,
    // pg never resets a session between users: code written for it may rely on that (SET in a
    // 'connect' listener). `resetOnRelease: true` turns pgdbpool's reset on.
    reset_on_release: o.resetOnRelease === true,
  }
  return { type: 'non-threaded', db: endpoint, groups: { default: group } }
}
