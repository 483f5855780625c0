// Errors as node-postgres raises them: server errors are `DatabaseError`s whose `code` is the
// SQLSTATE; a lost connection says 'Connection terminated unexpectedly'.

import { AbortError, DBConnectionError, DBOfflineError, DBQueryError, PoolClosedError, PoolTimeoutError } from '../errors'
import { realPg } from './types'

/** pg-protocol's DatabaseError's shape. */
class OwnDatabaseError extends Error {
  declare severity: string | undefined
  declare code: string | undefined
  declare detail: string | undefined
  declare hint: string | undefined
  declare position: string | undefined
  declare internalPosition: string | undefined
  declare internalQuery: string | undefined
  declare where: string | undefined
  declare schema: string | undefined
  declare table: string | undefined
  declare column: string | undefined
  declare dataType: string | undefined
  declare constraint: string | undefined
  declare file: string | undefined
  declare line: string | undefined
  declare routine: string | undefined
  constructor(
    message: string,
    public readonly length: number,
    public readonly name: string,
  ) {
    super(message)
  }
}

/**
 * The class of server errors: node-postgres's own (`require('pg').DatabaseError`, from
 * pg-protocol) when `pg` is installed, so `instanceof` checks written for pg hold; else ours,
 * with the same fields.
 */
export const DatabaseError: typeof OwnDatabaseError = realPg?.DatabaseError ?? OwnDatabaseError
export type DatabaseError = OwnDatabaseError

/** Fields copied from a `DBQueryError`, under pg's names. */
const FIELDS = ['severity', 'detail', 'hint', 'position', 'where', 'schema', 'table', 'column', 'dataType', 'constraint', 'routine'] as const

/** An error of the pool as node-postgres would have raised it. */
export function toPgError(e: unknown): Error {
  if (e instanceof DBQueryError) {
    if (e.sqlState === undefined) {
      const error = new Error(e.message, { cause: e })
      return error
    }
    const error = new DatabaseError(e.message, e.message.length, 'error')
    error.code = e.sqlState
    for (const key of FIELDS) {
      const value = (e as unknown as Record<string, unknown>)[key]
      if (value !== undefined) (error as unknown as Record<string, unknown>)[key] = value
    }
    Object.defineProperty(error, 'cause', { value: e, enumerable: false, configurable: true, writable: true })
    return error
  }
  if (e instanceof DBConnectionError) return new Error('Connection terminated unexpectedly', { cause: e })
  if (e instanceof PoolTimeoutError) return new Error('timeout exceeded when trying to connect', { cause: e })
  if (e instanceof PoolClosedError) return new Error('Cannot use a pool after calling end on the pool', { cause: e })
  if (e instanceof DBOfflineError) {
    const error = new Error(e.message, { cause: e }) as Error & { code?: string }
    if (/refused/i.test(e.message)) error.code = 'ECONNREFUSED'
    return error
  }
  if (e instanceof AbortError) return e
  return e instanceof Error ? e : new Error(String(e))
}
