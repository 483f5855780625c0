// `pgdbpool/pg`: a drop-in for the `pg` module (node-postgres 8) over pgdbpool's core.

export { Pool } from './pool'
export type { PoolConfig, ListenArg } from './pool'
export { Client } from './client'
export type { QueryConfig } from './typings'
export { Cursor } from './cursor'
export { Result } from './decode'
export type { FieldDef } from './decode'
export { DatabaseError } from './errors'
export { escapeIdentifier, escapeLiteral } from './escape'
export { defaults } from './defaults'
export { types, TypeOverrides } from './types'
export type { TypeParser, TypeSource } from './types'
export type { Listener, Notification } from './listen'
export type { PgConfig } from './config'
export type {
  CustomTypesConfig,
  PoolOptions,
  QueryArrayConfig,
  QueryArrayResult,
  QueryConfigValues,
  QueryResult,
  QueryResultBase,
  QueryResultRow,
  Submittable,
  TransactionStatus,
} from './typings'

/** pg-native is not offered: always undefined. */
export const native = undefined
