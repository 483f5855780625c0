// pg's Client (and PoolClient): a pgdbpool Handler underneath. Queries go to the core one
// operation each, in submission order on the handler's connection (pg@8 queues a client's
// queries the same way); results cross as one Buffer each and are decoded with pg's parsers.

import { EventEmitter } from 'node:events'

import type { RowMode } from '../codec'
import { Op } from '../native'
import type { Handler } from '../handler'
import { Pool as PgDbPool } from '../pool'
import { toPoolConfig, type PgConfig } from './config'
import { Cursor } from './cursor'
import { Result, decodePg } from './decode'
import { DatabaseError, toPgError } from './errors'
import { escapeIdentifier, escapeLiteral } from './escape'
import { MESSAGE_END, MESSAGE_NOTICE, MESSAGE_NOTIFICATION, attach, detach, parseNotice, parseNotification, subscribe } from './session'
import { TypeOverrides, fastSet, types as globalTypes, type TypeParser, type TypeSource } from './types'
import type {
  QueryArrayConfig,
  QueryArrayResult,
  QueryConfig as PgQueryConfig,
  QueryConfigValues,
  QueryResult,
  QueryResultRow,
  Submittable,
  TransactionStatus,
} from './typings'
import { prepareValue } from './utils'

type Callback = (err: Error | null | undefined, result?: any) => void

/** Events that need the session's asynchronous messages. */
const ASYNC_EVENTS = new Set<string | symbol>(['notification', 'notice', 'error', 'end'])

const enum State {
  New,
  Connecting,
  Connected,
  Ended,
}

/** A query as pg normalizes it. */
export interface QueryConfig {
  text: string
  values?: readonly unknown[]
  name?: string
  rowMode?: 'array' | string
  types?: TypeSource
  callback?: Callback
  query_timeout?: number
}

/**
 * Whether `text` is a BEGIN that cannot fail: `BEGIN [WORK | TRANSACTION]` or `START TRANSACTION`
 * with at most one isolation level, one access mode and one DEFERRABLE clause. Such a BEGIN is
 * held back and goes out with the client's next statement, in the same round trip (what pgdbpool
 * does with its own BEGIN): every ORM sends BEGIN as a statement of its own.
 */
export function deferrableBegin(text: string): boolean {
  const words = text
    .trim()
    .replace(/;$/, '')
    .trim()
    .toLowerCase()
    .split(/[\s,]+/)
  let i = 0
  if (words[0] === 'begin') {
    i = words[1] === 'work' || words[1] === 'transaction' ? 2 : 1
  } else if (words[0] === 'start' && words[1] === 'transaction') {
    i = 2
  } else {
    return false
  }
  const seen = new Set<string>()
  const once = (kind: string) => {
    if (seen.has(kind)) return false
    seen.add(kind)
    return true
  }
  while (i < words.length) {
    const [a, b, c, d] = words.slice(i, i + 4)
    if (
      a === 'isolation' &&
      b === 'level' &&
      (c === 'serializable' || ((c === 'repeatable' || c === 'read') && (d === 'read' || d === 'committed' || d === 'uncommitted')))
    ) {
      if (c === 'repeatable' && d !== 'read') return false
      if (c === 'read' && d !== 'committed' && d !== 'uncommitted') return false
      if (!once('isolation')) return false
      i += c === 'serializable' ? 3 : 4
    } else if (a === 'read' && (b === 'only' || b === 'write')) {
      if (!once('access')) return false
      i += 2
    } else if (a === 'deferrable' || (a === 'not' && b === 'deferrable')) {
      if (!once('deferrable')) return false
      i += a === 'not' ? 2 : 1
    } else {
      return false
    }
  }
  return true
}

/** Parameters as pg prepares them. */
export function prepareValues(values: readonly unknown[] | undefined | null): Array<string | Buffer | null> | undefined {
  if (values === undefined || values === null) return undefined
  if (!Array.isArray(values)) throw new Error('Query values must be an array')
  const out = new Array(values.length)
  for (let i = 0; i < values.length; i++) out[i] = prepareValue(values[i])
  return out
}

/** Turns pg's `query(text | config, values?, callback?)` into one config; null for a submittable. */
export function normalizeQuery(config: unknown, values: unknown, callback: unknown): QueryConfig {
  if (config === null || config === undefined) throw new TypeError('Client was passed a null or undefined query')
  let out: QueryConfig
  if (typeof config === 'string') out = { text: config }
  else if (typeof config === 'object') out = { ...(config as QueryConfig) }
  else throw new TypeError(`query text must be a string or a query config object (got ${typeof config})`)
  if (typeof values === 'function') out.callback = values as Callback
  else if (values !== undefined && values !== null) out.values = values as unknown[]
  if (typeof callback === 'function') out.callback = callback as Callback
  return out
}

/** Hands a pg query result or error to a callback or a promise, as pg does. */
export function settle<T>(promise: Promise<T>, callback: Callback | undefined): Promise<T> | undefined {
  if (callback === undefined) return promise
  promise.then(
    (r) => callback(null, r),
    (e) => callback(e),
  )
  return undefined
}

/** Standalone clients' pgdbpool pools, one per distinct connection settings, while in use. */
const shared = new Map<string, { pool: PgDbPool; users: number }>()

async function sharedPool(config: PgConfig): Promise<{ key: string; pool: PgDbPool }> {
  const password = typeof config.password === 'function' ? await config.password() : config.password
  const poolConfig = toPoolConfig(config, password ?? undefined, true)
  const key = JSON.stringify(poolConfig)
  let entry = shared.get(key)
  if (entry === undefined || entry.pool.closed) {
    entry = { pool: new PgDbPool(poolConfig), users: 0 }
    entry.pool.ready.catch(() => {})
    shared.set(key, entry)
  }
  entry.users++
  return { key, pool: entry.pool }
}

function unshare(key: string, pool: PgDbPool): void {
  const entry = shared.get(key)
  if (entry === undefined || entry.pool !== pool) return
  if (--entry.users === 0) {
    shared.delete(key)
    pool.close({ timeout: 5000 }).catch(() => {})
  }
}

/** What a pooled client reports to its pool. */
export interface ClientOwner {
  _released(client: Client, err: unknown): void
}

/**
 * node-postgres's Client. Standalone (`new Client(config)`), it takes a connection at
 * `connect()` and closes it at `end()`; `new Client({ pool, group })` takes it from a pgdbpool
 * pool's group. Clients handed out by `pgdbpool/pg`'s Pool have `release()`.
 */
export class Client extends EventEmitter {
  host: string
  port: number
  user?: string | undefined
  database?: string | undefined
  ssl: boolean
  /** pg's pipelining flag: statements of a client are queued in the core (always). */
  readonly pipeline = false
  /** pg's wire connection: there is none in JS here (the core holds the socket). */
  readonly connection: any = null
  /** The server process serving this client (pg's `processID`), null before it is connected. */
  processID?: number = undefined
  secretKey: number | null = null
  declare password?: string | undefined
  readonly connectionParameters: Record<string, unknown>
  /** pg's `release(err?)`, on clients handed out by a Pool. */
  declare release: (err?: unknown) => void

  readonly #config: PgConfig
  readonly #types: TypeOverrides
  readonly #owner: ClientOwner | null
  #state = State.New
  #db: Handler | null = null
  #connecting: Promise<void> | null = null
  #sharedKey: string | null = null
  #sharedPool: PgDbPool | null = null
  #subscription = 0
  /** An open cursor: later queries wait for it. */
  #gate: Promise<void> | null = null
  #lost = false
  /** A BEGIN held back to go out with the next statement (see `deferrableBegin`). */
  #pendingBegin: string | null = null
  /** Statements submitted and not answered yet. */
  #inflight = 0

  constructor(config?: string | PgConfig, owner?: ClientOwner) {
    super()
    const c: PgConfig = typeof config === 'string' ? { connectionString: config } : { ...(config ?? {}) }
    // A password may be a hidden (non-enumerable) property (Knex hides it): read it as pg does.
    if (typeof config === 'object' && config !== null && config.password !== undefined) c.password = config.password
    this.#config = c
    this.#owner = owner ?? null
    this.#types = new TypeOverrides((c.types as TypeSource | undefined) ?? undefined)
    this.host = c.host ?? 'localhost'
    this.port = c.port === undefined ? 5432 : Number(c.port)
    this.user = c.user
    this.database = c.database
    this.ssl = Boolean(c.ssl)
    Object.defineProperty(this, 'password', { value: c.password, enumerable: false, writable: true, configurable: true })
    this.connectionParameters = { host: c.host, port: this.port, user: c.user, database: c.database, application_name: c.application_name }
    if (owner !== undefined) this.#state = State.Connected
  }

  // ---------- events: the session's asynchronous messages reach listeners of these ----------

  override addListener(event: string | symbol, listener: (...args: any[]) => void): this {
    super.addListener(event, listener)
    if (ASYNC_EVENTS.has(event)) this.#wantAsync()
    return this
  }

  override on(event: string | symbol, listener: (...args: any[]) => void): this {
    return this.addListener(event, listener)
  }

  override prependListener(event: string | symbol, listener: (...args: any[]) => void): this {
    super.prependListener(event, listener)
    if (ASYNC_EVENTS.has(event)) this.#wantAsync()
    return this
  }

  #wantAsync(): void {
    const db = this.#db
    if (db === null || this.#subscription !== 0 || db._handler < 0) return
    this.#subscription = subscribe(db._core, db._handler, (kind, body) => this.#message(kind, body))
  }

  #message(kind: number, body: Buffer): void {
    if (kind === MESSAGE_NOTIFICATION) {
      if (this.listenerCount('notification') > 0) this.emit('notification', parseNotification(body))
    } else if (kind === MESSAGE_NOTICE) {
      if (this.listenerCount('notice') > 0) this.emit('notice', parseNotice(body))
    } else if (kind === MESSAGE_END && this.#state === State.Connected && !this.#lost) {
      this.#lost = true
      const error = new Error('Connection terminated unexpectedly')
      // pg emits 'error' here; without a listener that would crash the process: never here.
      if (this.listenerCount('error') > 0) this.emit('error', error)
      this.emit('end')
    }
  }

  // ---------- connection ----------

  /** @internal A pooled client gets its checkout. */
  _bind(db: Handler, pid: number): void {
    this.#db = db
    this.#lost = false
    this.processID = pid || undefined
    this.#state = State.Connected
    if (this.listenerCount('notification') + this.listenerCount('notice') + this.listenerCount('error') + this.listenerCount('end') > 0) this.#wantAsync()
  }

  /** @internal A pooled client lets go of its checkout; with `destroy`, the connection is closed. */
  _unbind(destroy: boolean): void {
    const db = this.#db
    this.#db = null
    this.#gate = null
    // A BEGIN never sent: no transaction was started.
    this.#pendingBegin = null
    if (db === null) return
    if (db._handler >= 0) detach(db._core, db._handler, this.#subscription)
    this.#subscription = 0
    if (destroy) db._discard()
    else db.release()
  }

  connect(): Promise<Client>
  connect(callback: ((err: Error) => void) | ((err: null, c: Client) => void)): void
  connect(callback?: any): Promise<Client> | undefined {
    if (this.#state !== State.New) {
      const err = new Error('Client has already been connected. You cannot reuse a client.')
      if (callback) {
        process.nextTick(() => callback(err))
        return undefined
      }
      return Promise.reject(err)
    }
    this.#state = State.Connecting
    this.#connecting = this.#open()
    const done = this.#connecting.then(
      () => {
        this.#state = State.Connected
        this.emit('connect')
        return this
      },
      (e: unknown) => {
        this.#state = State.Ended
        throw toPgError(e)
      },
    )
    if (callback) {
      done.then(
        () => callback(null, this),
        (e) => callback(e),
      )
      return undefined
    }
    return done
  }

  async #open(): Promise<void> {
    const c = this.#config
    let pool: PgDbPool
    let group = 'default'
    if (c.pool instanceof PgDbPool) {
      pool = c.pool
      group = typeof c.group === 'string' ? c.group : 'default'
    } else {
      const got = await sharedPool(c)
      this.#sharedKey = got.key
      this.#sharedPool = got.pool
      pool = got.pool
    }
    let db: Handler | undefined
    try {
      db = pool.handler(group)
      await db.acquire()
      if (this.#state === State.Ended) throw new Error('Connection terminated')
      this.#bindStandalone(db)
    } catch (e) {
      db?.release()
      this.#unshare()
      throw e
    }
  }

  #bindStandalone(db: Handler): void {
    const pid = attach(db._core, db._handler)
    this.#db = db
    this.processID = pid || undefined
    if (this.listenerCount('notification') + this.listenerCount('notice') + this.listenerCount('error') + this.listenerCount('end') > 0) this.#wantAsync()
  }

  #unshare(): void {
    if (this.#sharedKey !== null && this.#sharedPool !== null) unshare(this.#sharedKey, this.#sharedPool)
    this.#sharedKey = null
    this.#sharedPool = null
  }

  /** Closes the connection (a standalone client's) and emits `end`. */
  end(): Promise<void>
  end(callback: (err: Error) => void): void
  end(callback?: (err?: any) => void): Promise<void> | undefined {
    let p: Promise<void>
    if (this.#owner !== null) {
      // A pooled client: its connection is closed, not returned.
      if (this.#db !== null) this.release(true)
      p = Promise.resolve()
    } else if (this.#state === State.Ended) {
      p = Promise.resolve()
    } else {
      const wasConnecting = this.#connecting
      this.#state = State.Ended
      p = (async () => {
        if (wasConnecting !== null) await wasConnecting.catch(() => {})
        this._unbind(true)
        this.#unshare()
        this.emit('end')
      })()
    }
    if (callback) {
      p.then(
        () => callback(),
        (e) => callback(e),
      )
      return undefined
    }
    return p
  }

  ref(): void {}
  unref(): void {}

  // ---------- queries ----------

  query<T extends Submittable>(queryStream: T): T
  query<R extends any[] = any[], I = any[]>(queryConfig: QueryArrayConfig<I>, values?: QueryConfigValues<I>): Promise<QueryArrayResult<R>>
  query<R extends QueryResultRow = any, I = any>(queryConfig: PgQueryConfig<I>): Promise<QueryResult<R>>
  query<R extends QueryResultRow = any, I = any[]>(queryTextOrConfig: string | PgQueryConfig<I>, values?: QueryConfigValues<I>): Promise<QueryResult<R>>
  query<R extends any[] = any[], I = any[]>(queryConfig: QueryArrayConfig<I>, callback: (err: Error, result: QueryArrayResult<R>) => void): void
  query<R extends QueryResultRow = any, I = any[]>(queryTextOrConfig: string | PgQueryConfig<I>, callback: (err: Error, result: QueryResult<R>) => void): void
  query<R extends QueryResultRow = any, I = any[]>(
    queryText: string,
    values: QueryConfigValues<I>,
    callback: (err: Error, result: QueryResult<R>) => void,
  ): void
  query(config: any, values?: any, callback?: any): any {
    if (config !== null && typeof config === 'object' && typeof config.submit === 'function') {
      if (!(config instanceof Cursor)) {
        throw new TypeError("pgdbpool/pg runs its own Cursor as a submittable; other submittables (pg-query-stream, pg-cursor) drive pg's socket themselves")
      }
      if (typeof values === 'function') config.callback = values
      this.#submitCursor(config)
      return config
    }
    const q = normalizeQuery(config, values, callback)
    return settle(this.#query(q), q.callback)
  }

  #submitCursor(cursor: Cursor): void {
    const previous = this.#gate
    const client = this
    const host = {
      run: (text: string, vals: readonly unknown[] | undefined, rowMode: RowMode, types: TypeSource | undefined) =>
        this.#run(text, vals, rowMode, types) as Promise<Result>,
      get inTransaction() {
        return client.inTransaction
      },
    }
    const start = () => cursor._attach(host)
    if (previous === null) start()
    else previous.then(start)
    const gate = cursor.finished.then(() => {
      if (this.#gate === gate) this.#gate = null
    })
    this.#gate = gate
  }

  #query(q: QueryConfig): Promise<Result | Result[]> {
    let prepared: Array<string | Buffer | null> | undefined
    try {
      if (typeof q.text !== 'string') throw new TypeError('Client was passed a query without text')
      prepared = prepareValues(q.values)
    } catch (e) {
      return Promise.reject(e)
    }
    const rowMode: RowMode = q.rowMode === 'array' ? 'array' : 'object'
    const run = () => this.#run(q.text, prepared, rowMode, q.types)
    let p: Promise<Result | Result[]>
    if (this.#gate !== null) p = this.#gate.then(run)
    else if (this.#state === State.Connecting && this.#connecting !== null) p = this.#connecting.then(run, run)
    else p = run()
    const timeout = q.query_timeout ?? (this.#config.query_timeout || undefined)
    if (typeof timeout === 'number' && timeout > 0) return withTimeout(p, timeout)
    return p
  }

  /** Runs one statement now on this client's connection (values already prepared). */
  #run(text: string, values: readonly unknown[] | undefined, rowMode: RowMode, queryTypes: TypeSource | undefined): Promise<Result | Result[]> {
    const db = this.#db
    if (db === null || db._handler < 0 || this.#state !== State.Connected) {
      const message =
        this.#state === State.Ended || (this.#owner !== null && db === null)
          ? 'Client was closed and is not queryable'
          : this.#state === State.New
            ? 'Client has not been connected'
            : 'Client has encountered a connection error and is not queryable'
      return Promise.reject(new Error(message))
    }
    if (this.#pendingBegin === null && this.#inflight === 0 && (values === undefined || values.length === 0) && deferrableBegin(text)) {
      // Answered at once, as the server would (a BEGIN of this form cannot fail); it goes out in
      // front of the next statement.
      this.#pendingBegin = text
      return Promise.resolve(new Result('BEGIN', null, [], [], rowMode === 'array'))
    }
    const source: TypeSource = queryTypes ?? this.#types
    const fast = fastSet(source)
    let chunk = fast.chunk
    const begin = this.#pendingBegin
    if (begin !== null) {
      this.#pendingBegin = null
      const text = Buffer.from(begin)
      const head = Buffer.allocUnsafe(4)
      head.writeUInt32BE(text.length, 0)
      chunk = Buffer.concat([chunk, head, text])
    }
    const decode = (buf: Buffer) => decodePg(buf, rowMode, source, fast)
    this.#inflight++
    return db._core.submit<Result | Result[]>(Op.PgHandlerQuery, db._handler, 0, decode, text, values, undefined, undefined, chunk).then(
      (r) => {
        this.#inflight--
        return r
      },
      (e) => {
        this.#inflight--
        throw toPgError(e)
      },
    )
  }

  // ---------- pg's helpers ----------

  getTypeParser(oid: number, format?: string): TypeParser {
    return this.#types.getTypeParser(oid, format)
  }

  setTypeParser(oid: number, format: string | TypeParser, parseFn?: TypeParser): void {
    this.#types.setTypeParser(oid, format, parseFn)
  }

  escapeIdentifier(name: string): string {
    return escapeIdentifier(name)
  }

  escapeLiteral(text: string): string {
    return escapeLiteral(text)
  }

  /** pg's transaction status: `'T'` in a transaction (open or failed), else `'I'`; null before connecting. */
  getTransactionStatus(): TransactionStatus {
    if (this.#db === null) return null
    return this.inTransaction ? 'T' : 'I'
  }

  /** COPY streams (pg-copy-streams) drive pg's socket: not available here. */
  copyFrom(_queryText: string): never {
    throw new Error('pgdbpool/pg does not support COPY streams (copyFrom)')
  }

  copyTo(_queryText: string): never {
    throw new Error('pgdbpool/pg does not support COPY streams (copyTo)')
  }

  pauseDrain(): void {}
  resumeDrain(): void {}

  /** Whether a transaction is open, as the server last said (not in pg). */
  get inTransaction(): boolean {
    return this.#pendingBegin !== null || (this.#db?.inTransaction ?? false)
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('Query read timeout')), ms)
    p.then(
      (v) => {
        clearTimeout(timer)
        resolve(v)
      },
      (e) => {
        clearTimeout(timer)
        reject(e)
      },
    )
  })
}

export { DatabaseError, globalTypes }
