import { EventEmitter } from 'node:events'
import { inspect } from 'node:util'

import { Config, NormalizedConfig, nativeConfigJson, normalizeConfig } from './config'
import { FieldInfo, QueryResult, RowMode, decodeResult } from './codec'
import { PoolClosedError, UnconfiguredGroupError, fromNative } from './errors'
import { Checkout } from './checkout'
import { Core, NativePool, Op, openNativePool } from './native'
import { Cursor, CursorOptions } from './cursor'
import { Listener, ListenOptions, Notification, startListener } from './pg/listen'

// Node 18.x before 18.18 lacks the well-known symbol that `await using` looks up.
if (typeof Symbol.asyncDispose !== 'symbol') {
  Object.defineProperty(Symbol, 'asyncDispose', { value: Symbol.for('Symbol.asyncDispose') })
}

export interface QueryOptions {
  /** `'array'` returns each row as an array in column order. */
  rowMode?: RowMode
}

export interface AcquireOptions {
  /** Gives up waiting for a connection when this signal aborts (rejects with `AbortError`). */
  signal?: AbortSignal
}

export interface PoolQueryOptions extends QueryOptions {
  /**
   * Rejects the query with `AbortError` when this signal aborts. A statement still waiting for a
   * connection then never reaches the server; one already sent runs on (its connection may be
   * shared with others by pipelining, so it is not cancelled on the server; use a handler for
   * that) and its result is dropped.
   */
  signal?: AbortSignal
  /** Group to run on; `'default'` unless given. */
  group?: string
}

/** A statement as text plus values, or node-postgres's `{ text, values, rowMode }` object. */
export type QueryInput = string | { text: string; values?: readonly unknown[]; rowMode?: RowMode }

export interface EndpointStats {
  id: string
  host: string
  port: number
  size: number
  idle: number
  inUse: number
  opening: number
  banned: boolean
  wrongRole: boolean
  /** The server's role as last seen, null before the first connection. */
  role: 'primary' | 'standby' | null
  readOnly: boolean | null
  failures: number
  lastError: string | null
}

export interface GroupStats {
  name: string
  max: number
  size: number
  idle: number
  inUse: number
  opening: number
  waiting: number
  acquires: number
  waits: number
  timeouts: number
  connects: number
  connectErrors: number
  disconnects: number
  /** Disconnects by reason: idle_timeout, max_lifetime, max_uses, broken, wrong_role, rebalance, closed, error. */
  disconnectsByReason: Record<string, number>
  /** One-shot statements retried on another connection because they had not been sent. */
  retries: number
  queryErrors: number
  /** Sessions reset for a new user (`reset_on_release`) because the last one may have changed session state. */
  resets: number
  /** Sessions released inside a transaction (open or failed), rolled back before anyone else got them. */
  releaseRollbacks: number
  endpoints: EndpointStats[]
}

export interface PoolStats {
  type: 'threaded' | 'non-threaded'
  /** Pool objects attached to the same native pool (worker threads, with `threaded`). */
  users: number
  closed: boolean
  groups: Record<string, GroupStats>
}

export interface CloseOptions {
  /** Milliseconds to let checked-out handlers finish before their work is cancelled. */
  timeout?: number
}

/** What a `Handler` needs of its pool: the core and the checkout queue of its group. */
interface GroupContext {
  core: Core
  checkout: Checkout
  autocommit: boolean
  pool: Pool
  leakThreshold: number
}

/**
 * A lifecycle event from the core, emitted under its `type`: `connect`, `disconnect` (with the
 * reason), `ban`, `unban`, `role_change`, `error`.
 */
export interface PoolEvent {
  type: 'connect' | 'disconnect' | 'acquire' | 'release' | 'ban' | 'unban' | 'role_change' | 'error'
  /** Milliseconds since the epoch. */
  at: number
  group: string | null
  endpoint: string | null
  reason: string | null
}

/** Payload of the `leak` event: a handler held longer than its group's `leak_threshold`. */
export interface LeakEvent {
  group: string
  heldMs: number
  /** Where the handler took its connection. */
  stack: string
}

const RESOLVED = Promise.resolve()

function splitInput(input: QueryInput, params: readonly unknown[] | undefined, options: QueryOptions | undefined) {
  if (typeof input === 'string') return { text: input, values: params, rowMode: options?.rowMode ?? 'object' }
  if (input === null || typeof input !== 'object' || typeof input.text !== 'string') {
    throw new TypeError('query text must be a string or an object with a string `text`')
  }
  return { text: input.text, values: params ?? input.values, rowMode: options?.rowMode ?? input.rowMode ?? 'object' }
}

/**
 * A connection pool over one or more PostgreSQL endpoints. Most programs use the module-level
 * `init()` / `Handler` / `query()` functions, which share one default `Pool`; create `Pool`s
 * directly to hold several independent pools in one process.
 */
export class Pool extends EventEmitter {
  readonly #native: NativePool
  readonly #core = new Core()
  readonly #config: NormalizedConfig
  readonly #groups: Map<string, number>
  readonly #checkouts: Checkout[]
  readonly #contexts: GroupContext[]
  #closing: Promise<void> | undefined
  /** Settles once the first connections are open; rejects with `DBOfflineError`. */
  readonly ready: Promise<void>

  /** Validates `config` (throwing `ConfigError`) and starts connecting in the background. */
  constructor(config: Config) {
    super()
    this.#config = normalizeConfig(config)
    this.#groups = new Map(this.#config.groups.map((g, i) => [g.name, i]))
    try {
      this.#native = openNativePool(nativeConfigJson(this.#config), this.#config.type === 'threaded', this.#core.wakeUp())
    } catch (e) {
      throw fromNative(e)
    }
    this.#core.attach(this.#native)
    this.#core.decode = (buf, rowMode) => decodeResult(buf, rowMode, this.#config.types)
    this.#core.onEvents = (json) => {
      for (const event of JSON.parse(json) as PoolEvent[]) this.notify(event.type, event)
    }
    this.#checkouts = this.#config.groups.map(
      (g, index) => new Checkout(this.#core, { name: g.name, index, acquireTimeout: g.acquire_timeout, maxWaiting: g.max_waiting }),
    )
    this.#contexts = this.#checkouts.map((checkout, i) => ({
      core: this.#core,
      checkout,
      autocommit: this.#config.groups[i].autocommit,
      pool: this,
      leakThreshold: this.#config.groups[i].leak_threshold,
    }))
    this.ready = this.#native.warmUp().catch((e: unknown) => {
      throw fromNative(e)
    })
    // Callers that never look at `ready` must not get an unhandled rejection.
    this.ready.catch(() => {})
  }

  /** Group names in configuration order. */
  get groups(): string[] {
    return [...this.#groups.keys()]
  }

  get closed(): boolean {
    return this.#closing !== undefined
  }

  #groupIndex(group: string): number {
    if (this.#closing) throw new PoolClosedError()
    const index = this.#groups.get(group)
    if (index === undefined) throw new UnconfiguredGroupError(group, this.groups)
    return index
  }

  /**
   * Emits `event` to its listeners, if any. A listener that throws cannot break the pool's own
   * bookkeeping: its error becomes a process warning. `error` is never emitted without a
   * listener (EventEmitter would throw).
   * @internal
   */
  notify(event: string, payload: unknown): void {
    if (this.listenerCount(event) === 0) return
    try {
      this.emit(event, payload)
    } catch (e) {
      process.emitWarning(`a pgdbpool '${event}' listener threw: ${(e as Error)?.stack ?? e}`, 'PgDbPoolListenerWarning')
    }
  }

  /** @internal */
  context(group: string): GroupContext {
    return this.#contexts[this.#groupIndex(group)]
  }

  /** A scoped handler on `group`; it takes a connection on first use. */
  handler(group = 'default'): Handler {
    return new Handler(group, this)
  }

  /** Runs `fn` with a handler; commits when it returns, rolls back when it throws. */
  withHandler<T>(group: string, fn: (db: Handler) => Promise<T> | T): Promise<T> {
    return runWithHandler(new Handler(group, this), fn)
  }

  /** One statement on any connection of the group (no explicit checkout). */
  query<R = Record<string, unknown>>(input: QueryInput, params?: readonly unknown[], options?: PoolQueryOptions): Promise<QueryResult<R>> {
    try {
      const { text, values, rowMode } = splitInput(input, params, options)
      return this.#core.submit(Op.Query, this.#groupIndex(options?.group ?? 'default'), 0, rowMode, text, values, options?.signal)
    } catch (e) {
      return Promise.reject(e)
    }
  }

  /**
   * LISTEN on `channel` over a connection of its own from `options.group` (default
   * `'default'`), shared by every `listen` of that pool and group. `onNotify(payload,
   * notification)` hears each notification. The connection is watched (its end is noticed at
   * once, and a heartbeat checks every `heartbeat` ms that it still answers, still listens and is
   * not read-only); when it is lost, or its server turns read-only after a failover, a new one is
   * taken (another endpoint when the group has one) and every channel LISTENed again, with
   * backoff. `options.onListen({ reconnected })` is called after each LISTEN: `reconnected:
   * true` means notifications sent in between may have been missed, so re-read what they would
   * have told. Resolves once the first LISTEN is done; `close()` on the result stops listening.
   */
  listen(channel: string, onNotify: (payload: string, notification: Notification) => void, options?: ListenOptions): Promise<Listener> {
    return startListener(this, channel, onNotify, options)
  }

  /** @internal lib/pg: the boundary with the core. */
  get _core(): Core {
    return this.#core
  }

  /** @internal lib/pg: the index of `group` (throws as a query on it would). */
  _groupIndex(group: string): number {
    return this.#groupIndex(group)
  }

  /** Gauges and counters per group and endpoint. */
  stats(): PoolStats {
    const groups: Record<string, GroupStats> = {}
    for (const g of JSON.parse(this.#native.stats()) as GroupStats[]) {
      // Handler checkouts of this thread wait in JS and are counted there; the core leaves out
      // the acquire requests it serves on their behalf.
      const checkout = this.#checkouts[this.#groups.get(g.name)!]
      g.waiting += checkout.waiting
      g.waits += checkout.waits
      g.timeouts += checkout.timeouts
      groups[g.name] = g
    }
    return { type: this.#config.type, users: this.#native.users, closed: this.closed, groups }
  }

  /**
   * Rejects new work, lets checked-out handlers finish (and hand their connections to checkouts
   * already waiting) for up to `timeout` ms (default 5000), then cancels what is left. With
   * `threaded`, the native pool closes when the last worker's pool object closes. Idempotent.
   */
  close(options: CloseOptions = {}): Promise<void> {
    const timeout = options.timeout ?? 5000
    if (!Number.isFinite(timeout) || timeout < 0) throw new TypeError('close timeout must be a number >= 0')
    if (this.#closing === undefined) {
      for (const c of this.#checkouts) c.close()
      this.#closing = this.#native.close(Math.min(timeout, 0xffffffff)).then(
        () => {
          for (const c of this.#checkouts) c.failAll(new PoolClosedError())
        },
        (e: unknown) => {
          for (const c of this.#checkouts) c.failAll(new PoolClosedError())
          throw fromNative(e)
        },
      )
    }
    return this.#closing
  }

  [inspect.custom](): string {
    const endpoints = this.#config.endpoints.map((e) => `${e.id} (${e.user}@${e.host}:${e.port}/${e.name})`)
    return `Pool { type: '${this.#config.type}', endpoints: [${endpoints.join(', ')}], groups: [${this.groups.join(', ')}]${this.closed ? ', closed' : ''} }`
  }
}

async function runWithHandler<T>(db: Handler, fn: (db: Handler) => Promise<T> | T): Promise<T> {
  try {
    const result = await fn(db)
    await db.commit()
    return result
  } catch (e) {
    await db.rollback().catch(() => {})
    throw e
  } finally {
    await db.release()
  }
}

/**
 * A scoped connection of one group, the equivalent of Python's `with Handler('group') as db:`.
 * Use it with `await using`, with `withHandler`, or call `release()` in a `finally`.
 * On release an uncommitted transaction is rolled back.
 */
export class Handler implements AsyncDisposable {
  readonly group: string
  readonly #ctx: GroupContext
  /** The core's number for this handler's connection; -1 while it holds none. */
  #handler = -1
  #acquiring: Promise<void> | undefined
  #released = false
  #leakTimer: NodeJS.Timeout | undefined

  constructor(group = 'default', pool?: Pool) {
    this.group = group
    this.#ctx = (pool ?? defaultPool()).context(group)
  }

  /**
   * Takes the connection now rather than at the first statement. An idle connection is taken
   * synchronously; otherwise this waits in the group's FIFO up to `acquire_timeout`.
   */
  acquire(options?: AcquireOptions): Promise<void> {
    if (this.#handler >= 0) return RESOLVED
    if (this.#acquiring) return this.#acquiring
    if (this.#released) return Promise.reject(new PoolClosedError('this handler was already released'))
    // Taken here, where the caller is on the stack (a wait ends in a callback from the core).
    const stack = this.#ctx.leakThreshold > 0 ? (new Error('handler taken here').stack ?? '').replace(/^Error: /, '') : ''
    const checkout = this.#ctx.checkout
    const signal = options?.signal
    let handler: number
    try {
      handler = checkout.take(signal)
    } catch (e) {
      return Promise.reject(e)
    }
    if (handler >= 0) {
      this.#acquired(handler, stack)
      return RESOLVED
    }
    let settle!: () => void
    let fail!: (e: Error) => void
    const granted = (handler: number) => {
      this.#acquiring = undefined
      if (this.#released) {
        checkout.release(handler)
        fail(new PoolClosedError('this handler was released while it waited for a connection'))
        return
      }
      this.#acquired(handler, stack)
      settle()
    }
    const failed = (e: Error) => {
      this.#acquiring = undefined
      fail(e)
    }
    try {
      checkout.wait(granted, failed, signal)
    } catch (e) {
      return Promise.reject(e)
    }
    // `granted` and `failed` are only ever called later, from the core, a timer or the signal.
    this.#acquiring = new Promise<void>((resolve, reject) => {
      settle = resolve
      fail = reject
    })
    return this.#acquiring
  }

  #acquired(handler: number, stack: string) {
    this.#handler = handler
    const { pool, leakThreshold } = this.#ctx
    if (leakThreshold > 0) {
      const taken = Date.now()
      this.#leakTimer = setTimeout(() => {
        const leak: LeakEvent = { group: this.group, heldMs: Date.now() - taken, stack }
        if (pool.listenerCount('leak') > 0) pool.notify('leak', leak)
        else
          process.emitWarning(
            `a handler of group '${leak.group}' has held its connection for ${leak.heldMs} ms (leak_threshold); ${stack}`,
            'PgDbPoolLeakWarning',
          )
      }, leakThreshold)
      this.#leakTimer.unref()
    }
    if (pool.listenerCount('acquire') > 0) pool.notify('acquire', { group: this.group })
  }

  /** Runs one statement; parameters are `$1..$n`, always bound, never interpolated. */
  query<R = Record<string, unknown>>(input: QueryInput, params?: readonly unknown[], options?: QueryOptions & AcquireOptions): Promise<QueryResult<R>> {
    let text: string, values: readonly unknown[] | undefined, rowMode: RowMode
    try {
      ;({ text, values, rowMode } = splitInput(input, params, options))
    } catch (e) {
      return Promise.reject(e)
    }
    if (this.#handler < 0) {
      const got = this.acquire(options)
      // An idle connection was taken synchronously: no extra tick.
      if (this.#handler < 0) return got.then(() => this.#run<R>(text, values, rowMode, options?.signal))
    }
    return this.#run<R>(text, values, rowMode, options?.signal)
  }

  #run<R>(text: string, values: readonly unknown[] | undefined, rowMode: RowMode, signal: AbortSignal | undefined): Promise<QueryResult<R>> {
    const handler = this.#handler
    const core = this.#ctx.core
    if (signal === undefined) return core.submit(Op.HandlerQuery, handler, 0, rowMode, text, values)
    // Aborting cancels the statement on the server too (the connection is this handler's alone)
    // if it is the one running, or drops it if it still waits behind another; after release()
    // the connection may be someone else's, and an abort does nothing.
    return core.submit(Op.HandlerQuery, handler, 0, rowMode, text, values, signal, () => this.#handler === handler)
  }

  /**
   * A server-side cursor over a result too big to hold: `for await (const row of db.cursor(sql,
   * params, { batchSize }))` fetches `batchSize` rows per round trip (see `Cursor`).
   */
  cursor<R = Record<string, unknown>>(input: QueryInput, params?: readonly unknown[], options?: CursorOptions): Cursor<R> {
    const { text, values, rowMode } = splitInput(input, params, options)
    return new Cursor<R>(this, text, values, { ...options, rowMode }, this.#ctx.autocommit)
  }

  /**
   * The seed's prepared-query call: `SELECT * FROM "SQLPrepare"."ExecuteQuery"($1, ...)` (the
   * prep_queries extension, with `sqlprepare: true` on the group); returns the first column of
   * the first row.
   */
  async queryPrepared(params: readonly unknown[]): Promise<unknown> {
    if (!Array.isArray(params) || params.length === 0) throw new TypeError('queryPrepared needs a non-empty array of parameters')
    const placeholders = params.map((_, i) => `$${i + 1}`).join(', ')
    const result = await this.query<unknown[]>(`SELECT * FROM "SQLPrepare"."ExecuteQuery"(${placeholders})`, params, { rowMode: 'array' })
    return result.rows[0]?.[0]
  }

  /** Commits the open transaction; an aborted transaction or failed COMMIT rejects. */
  commit(): Promise<void> {
    return this.#end(Op.Commit)
  }

  /** Rolls back the open transaction, if any. */
  rollback(): Promise<void> {
    return this.#end(Op.Rollback)
  }

  #end(op: Op.Commit | Op.Rollback): Promise<void> {
    if (this.#handler >= 0) return this.#ctx.core.submit(op, this.#handler, 0, null)
    if (this.#acquiring) return this.#acquiring.then(() => this.#end(op))
    // No connection, so no transaction.
    return RESOLVED
  }

  /** @internal lib/pg: the boundary with the core. */
  get _core(): Core {
    return this.#ctx.core
  }

  /** @internal lib/pg: the core's number for this handler's connection; -1 while it holds none. */
  get _handler(): number {
    return this.#handler
  }

  /** Whether a transaction is open on this handler. */
  get inTransaction(): boolean {
    if (this.#handler < 0) return false
    this.#ctx.core.flush()
    return this.#ctx.core.native.inTransaction(this.#handler)
  }

  /**
   * Returns the connection to the pool. Idempotent. An open transaction is rolled back first
   * (in the background: the connection is not handed to anyone else before that is done).
   */
  release(): Promise<void> {
    this.#released = true
    const handler = this.#handler
    if (handler >= 0) {
      this.#handler = -1
      if (this.#leakTimer !== undefined) clearTimeout(this.#leakTimer)
      this.#ctx.checkout.release(handler)
      if (this.#ctx.pool.listenerCount('release') > 0) this.#ctx.pool.notify('release', { group: this.group })
    }
    return RESOLVED
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.release()
  }

  [inspect.custom](): string {
    return `Handler { group: '${this.group}' }`
  }
}

// ---------- module-level API over a default pool (the Python package's shape) ----------

let current: Pool | undefined

function defaultPool(): Pool {
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

export { Cursor }
export type { CursorOptions }
export type { FieldInfo, QueryResult, RowMode }
