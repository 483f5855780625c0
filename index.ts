/**
 * pgdbpool — a PostgreSQL connection pool with a Rust core, balancing and failing over across
 * several endpoints, with the Python pgdbpool's init / Handler / commit API.
 */
export { init, close, query, stats, withHandler, Connection, Cursor, Handler, Pool } from './lib/pool'
export type {
  AcquireOptions,
  CloseOptions,
  CursorOptions,
  EndpointStats,
  GroupStats,
  LeakEvent,
  PoolEvent,
  PoolQueryOptions,
  PoolStats,
  QueryInput,
  QueryOptions,
} from './lib/pool'
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
