// The module-level API (`init`, `query`, `withHandler`, `stats`, `close`, and `new Handler(group)`
// without a pool) over one default `Pool` per thread, the shape of the Python pgdbpool package.

import type { QueryResult } from './codec'
import type { Config } from './config'
import { PoolClosedError } from './errors'
import { Handler, runWithHandler } from './handler'
import { type CloseOptions, Pool, type PoolQueryOptions } from './pool'
import type { QueryInput } from './statement'
import type { PoolStats } from './stats'

let current: Pool | undefined

/** This thread's default pool; throws `PoolClosedError` before `init()` and after `close()`. */
export function defaultPool(): Pool {
  if (current === undefined) throw new PoolClosedError('pgdbpool is not initialised: call init(config) first')
  return current
}

/**
 * Validates `config` (throwing `ConfigError` synchronously) and makes it this thread's default
 * pool. The returned promise settles when the first connections are open and rejects with
 * `DBOfflineError` if some group reaches no endpoint; ignoring it is safe.
 */
export function init(config: Config): Promise<Pool> {
  const pool = new Pool(config)
  const previous = current
  current = pool
  if (previous) previous.close().catch(() => {})
  const ready = pool.ready.then(() => pool)
  ready.catch(() => {})
  return ready
}

/** Runs `fn` with a handler on the default pool; commit on success, rollback + rethrow on error. */
export function withHandler<T>(group: string, fn: (db: Handler) => Promise<T> | T): Promise<T> {
  let db: Handler
  try {
    db = new Handler(group)
  } catch (e) {
    return Promise.reject(e)
  }
  return runWithHandler(db, fn)
}

/** One statement on the default pool. */
export function query<R = Record<string, unknown>>(input: QueryInput, params?: readonly unknown[], options?: PoolQueryOptions): Promise<QueryResult<R>> {
  try {
    return defaultPool().query<R>(input, params, options)
  } catch (e) {
    return Promise.reject(e)
  }
}

/** Stats of the default pool. */
export function stats(): PoolStats {
  return defaultPool().stats()
}

/** Closes the default pool (see `Pool.close`). Closing when nothing is open is a no-op. */
export async function close(options?: CloseOptions): Promise<void> {
  const pool = current
  current = undefined
  if (pool) await pool.close(options)
}

/** The Python package's static entry points. */
export const Connection = {
  init,
  close,
  stats,
} as const
