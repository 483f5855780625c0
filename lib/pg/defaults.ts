// pg's `defaults`: node-postgres's own object when `pg` is installed (so what is set there
// applies here, and the other way round), else one of ours with the same keys.

import { realPg, types } from './types'

function ownDefaults(): Record<string, unknown> {
  let user: string | undefined
  try {
    user = process.platform === 'win32' ? process.env.USERNAME : process.env.USER
  } catch {
    user = undefined
  }
  const out: Record<string, unknown> = {
    host: 'localhost',
    user,
    database: undefined,
    password: null,
    connectionString: undefined,
    port: 5432,
    rows: 0,
    binary: false,
    max: 10,
    idleTimeoutMillis: 30000,
    client_encoding: '',
    ssl: false,
    application_name: undefined,
    fallback_application_name: undefined,
    options: undefined,
    parseInputDatesAsUTC: false,
    statement_timeout: false,
    lock_timeout: false,
    idle_in_transaction_session_timeout: false,
    query_timeout: false,
    connect_timeout: 0,
    keepalives: 1,
    keepalives_idle: 0,
  }
  const int8 = types.getTypeParser(20, 'text')
  const int8Array = types.getTypeParser(1016, 'text')
  // As in pg: int8 (and int8[]) parsed like int4 when set.
  Object.defineProperty(out, 'parseInt8', {
    enumerable: true,
    set(on: boolean) {
      types.setTypeParser(20, 'text', on ? types.getTypeParser(23, 'text') : int8)
      types.setTypeParser(1016, 'text', on ? types.getTypeParser(1007, 'text') : int8Array)
    },
  })
  return out
}

/** Settings shared with node-postgres (`parseInt8`, `parseInputDatesAsUTC`, ...). */
export const defaults: Record<string, any> = realPg?.defaults ?? ownDefaults()
