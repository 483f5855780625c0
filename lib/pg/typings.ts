// The shapes of node-postgres's public types (as @types/pg declares them), so that a
// pgdbpool/pg Pool or Client type-checks where code expects pg's (Drizzle's `client`, Kysely's
// `pool`, Prisma's `PrismaPg(pool)`), without depending on @types/pg.

import type { FieldDef } from './decode'

export type QueryConfigValues<T> = T extends Array<infer _U> ? T : never

export interface CustomTypesConfig {
  getTypeParser(oid: number, format?: any): (value: any) => any
}

export interface QueryConfig<I = any[]> {
  name?: string | undefined
  text: string
  values?: QueryConfigValues<I>
  types?: CustomTypesConfig | undefined
  rowMode?: string
  query_timeout?: number
  callback?: (err: Error | null, result?: any) => void
}

export interface QueryArrayConfig<I = any[]> extends QueryConfig<I> {
  rowMode: 'array'
}

export interface Submittable {
  submit: (connection: any) => void
}

export interface QueryResultRow {
  [column: string]: any
}

export interface QueryResultBase {
  command: string
  rowCount: number | null
  oid: number
  fields: FieldDef[]
}

export interface QueryResult<R extends QueryResultRow = any> extends QueryResultBase {
  rows: R[]
}

export interface QueryArrayResult<R extends any[] = any[]> extends QueryResultBase {
  rows: R[]
}

export type TransactionStatus = 'I' | 'T' | 'E' | null

/** pg-pool's options as a pool reports them back. */
export interface PoolOptions {
  max: number
  maxUses: number
  allowExitOnIdle: boolean
  maxLifetimeSeconds: number
  idleTimeoutMillis: number | null
  [key: string]: any
}
