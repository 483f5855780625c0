/** Base class of every error this library raises; `code` is stable across versions. */
export class PgDbPoolError extends Error {
  readonly code: string
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.code = code
    this.name = new.target.name
  }
}

/** The configuration given to `init` is invalid; the message starts with the key path. */
export class ConfigError extends PgDbPoolError {
  readonly path: string
  constructor(path: string, message: string) {
    super('CONFIG', path ? `${path}: ${message}` : message)
    this.path = path
  }
}

/** A handler or query named a group the configuration does not have. */
export class UnconfiguredGroupError extends PgDbPoolError {
  readonly group: string
  constructor(group: string, known: string[]) {
    super('UNCONFIGURED_GROUP', `group '${group}' is not configured (configured: ${known.join(', ')})`)
    this.group = group
  }
}

/** A connection could not be opened or was lost. */
export class DBConnectionError extends PgDbPoolError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('DB_CONNECTION', message, options)
  }
}

/** No endpoint of a group could be reached; `causes` has one line per attempt. */
export class DBOfflineError extends PgDbPoolError {
  readonly causes: string[]
  constructor(message: string, causes: string[], options?: { cause?: unknown }) {
    super('DB_OFFLINE', message, options)
    this.causes = causes
  }
}

/** Fields PostgreSQL sends with an error, named as in node-postgres's DatabaseError. */
export interface DatabaseErrorFields {
  sqlState?: string
  severity?: string
  detail?: string
  hint?: string
  position?: string
  schema?: string
  table?: string
  column?: string
  dataType?: string
  constraint?: string
  routine?: string
  where?: string
}

/** The server (or the client-side protocol) rejected a statement. */
export class DBQueryError extends PgDbPoolError implements DatabaseErrorFields {
  declare sqlState?: string
  declare severity?: string
  declare detail?: string
  declare hint?: string
  declare position?: string
  declare schema?: string
  declare table?: string
  declare column?: string
  declare dataType?: string
  declare constraint?: string
  declare routine?: string
  declare where?: string
  constructor(message: string, fields: DatabaseErrorFields = {}, options?: { cause?: unknown }) {
    super('DB_QUERY', message, options)
    for (const [key, value] of Object.entries(fields)) {
      if (value !== null && value !== undefined) (this as Record<string, unknown>)[key] = value
    }
  }
  /** node-postgres name of `sqlState`. */
  get sqlstate(): string | undefined {
    return this.sqlState
  }
}

/** No connection became free within `acquire_timeout`, or `max_waiting` was reached. */
export class PoolTimeoutError extends PgDbPoolError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('POOL_TIMEOUT', message, options)
  }
}

/** The pool was closed (or never initialised). */
export class PoolClosedError extends PgDbPoolError {
  constructor(message = 'the pool is closed', options?: { cause?: unknown }) {
    super('POOL_CLOSED', message, options)
  }
}

/** Raised when an `AbortSignal` given to an acquire or query fires first. */
export class AbortError extends PgDbPoolError {
  constructor(reason?: unknown) {
    super('ABORTED', reason instanceof Error ? `aborted: ${reason.message}` : 'the operation was aborted', { cause: reason })
    this.name = 'AbortError'
  }
}

interface NativeErrorWire {
  code: string
  message: string
  causes?: string[]
  db?: DatabaseErrorFields
}

/** Builds the error class matching the native core's JSON error description. */
export function fromWire(json: string): Error {
  let wire: NativeErrorWire
  try {
    wire = JSON.parse(json)
  } catch {
    return new PgDbPoolError('UNKNOWN', json)
  }
  const cause = { cause: wire }
  switch (wire.code) {
    case 'CONFIG':
      return new ConfigError('', wire.message)
    case 'DB_CONNECTION':
      return new DBConnectionError(wire.message, cause)
    case 'DB_OFFLINE':
      return new DBOfflineError(wire.message, wire.causes ?? [], cause)
    case 'DB_QUERY':
      return new DBQueryError(wire.message, wire.db, cause)
    case 'POOL_TIMEOUT':
      return new PoolTimeoutError(wire.message, cause)
    case 'POOL_CLOSED':
      return new PoolClosedError(wire.message, cause)
    default:
      return new PgDbPoolError(wire.code, wire.message, cause)
  }
}

/** Turns an error thrown by the native binding (JSON in its message) into the matching class. */
export function fromNative(err: unknown): Error {
  if (!(err instanceof Error)) return new PgDbPoolError('UNKNOWN', String(err), { cause: err })
  return err.message.startsWith('{') ? fromWire(err.message) : new PgDbPoolError('UNKNOWN', err.message, { cause: err })
}
