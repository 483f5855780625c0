/**
 * pgdbpool — a PostgreSQL connection pool with a Rust core, balancing and failing over across
 * several endpoints, with the Python pgdbpool's init / Handler / commit API.
 */
export { init, close, query, stats, withHandler, Connection } from './lib/default-pool'
export { Pool } from './lib/pool'
export type { CloseOptions, PoolQueryOptions } from './lib/pool'
export { Handler } from './lib/handler'
export type { AcquireOptions } from './lib/handler'
export { Cursor } from './lib/cursor'
export type { CursorOptions } from './lib/cursor'
export type { QueryInput, QueryOptions } from './lib/statement'
export type { HandlerEvent, LeakEvent, PoolEvent, PoolEvents } from './lib/events'
export type { EndpointStats, GroupStats, PoolStats } from './lib/stats'
export { PostgresInterval } from './lib/codec'
export type { FieldInfo, QueryResult, RowMode } from './lib/codec'
export type { Listener, ListenOptions, Notification } from './lib/pg/listen'
export type { Balance, Config, EndpointConfig, GroupConfig, SslMode, TargetSessionAttrs, TypeOptions } from './lib/config'
export {
  AbortError,
  ConfigError,
  DBConnectionError,
  DBOfflineError,
  DBQueryError,
  PgDbPoolError,
  PoolClosedError,
  PoolTimeoutError,
  UnconfiguredGroupError,
} from './lib/errors'
export type { DatabaseErrorFields } from './lib/errors'
