// pg's Pool over a pgdbpool group: `new Pool(pgConfig)` makes a pgdbpool pool of one endpoint
// and one group from pg's settings; `new Pool({ pool, group })` wraps a group of a pgdbpool pool
// the application configured (several endpoints, roles, failover).

import { EventEmitter } from 'node:events'

import type { RowMode } from '../codec'
import { Op } from '../native'
import type { Handler } from '../handler'
import { Pool as PgDbPool } from '../pool'
import type { GroupStats } from '../stats'
import { Client, normalizeQuery, prepareValues, settle, type ClientOwner } from './client'
import { toPoolConfig, type PgConfig } from './config'
import { decodePg, type Result } from './decode'
import { toPgError } from './errors'
import { startListener, type Listener, type Notification } from './listen'
import { attach } from './session'
import { fastSet, realPg, types as globalTypes, type TypeSource } from './types'
import type { PoolOptions, QueryArrayConfig, QueryArrayResult, QueryConfig, QueryConfigValues, QueryResult, QueryResultRow, Submittable } from './typings'

export interface PoolConfig extends PgConfig {
  /** A pgdbpool Pool to take connections from (then the pg connection keys are not used). */
  pool?: PgDbPool
  /** The group of `pool` to use; `'default'` unless given. */
  group?: string
}

/** What `listen` accepts after the callback: pg-boss's `onReconnect()` or an options object. */
export type ListenArg = ((info: { reconnected: boolean }) => void) | { onListen?: (info: { reconnected: boolean }) => void; heartbeat?: number }

function noop(): void {}

export class Pool extends EventEmitter implements ClientOwner {
  /** The settings given (the password is not enumerable), with pg-pool's defaults filled in. */
  readonly options: PoolOptions
  /** The client class (Kysely builds its control client from `pool.Client` and `pool.options`). */
  readonly Client = Client
  ending = false
  ended = false

  #inner: PgDbPool | null = null
  #starting: Promise<PgDbPool> | null = null
  readonly #owned: boolean
  readonly #group: string
  readonly #types: TypeSource
  /** Pooled clients by backend pid: one object per connection, as in pg. */
  readonly #clients = new Map<number, Client>()
  readonly #out = new Set<Client>()
  #drained: (() => void) | null = null
  #waiting = 0

  constructor(options: PoolConfig = {}) {
    super()
    const o: PoolConfig = { ...options }
    // A password may be a hidden (non-enumerable) property: read it as pg does.
    if (options.password !== undefined) o.password = options.password
    const opts: PoolOptions = { max: 10, idleTimeoutMillis: 10000, maxUses: Infinity, allowExitOnIdle: false, maxLifetimeSeconds: 0, ...o }
    delete opts.password
    Object.defineProperty(opts, 'password', { value: o.password, enumerable: false, writable: true, configurable: true })
    this.options = opts
    this.#types = (o.types as TypeSource | undefined) ?? globalTypes
    if (o.pool !== undefined) {
      if (!(o.pool instanceof PgDbPool)) throw new TypeError('pool must be a pgdbpool Pool')
      this.#owned = false
      this.#group = o.group ?? 'default'
      o.pool.context(this.#group) // an unknown group fails here, as a config error would
      this.#inner = o.pool
    } else {
      this.#owned = true
      this.#group = 'default'
      if (typeof o.password !== 'function') {
        this.#inner = new PgDbPool(toPoolConfig(o, o.password ?? undefined))
        this.#inner.ready.catch(() => {})
      }
    }
  }

  /** The pgdbpool pool underneath (made at the first use when the password is a function). */
  #pool(): PgDbPool | Promise<PgDbPool> {
    if (this.#inner !== null) return this.#inner
    if (this.#starting === null) {
      const fn = this.options.password as () => string | Promise<string>
      this.#starting = Promise.resolve()
        .then(() => fn())
        .then((password) => {
          const inner = new PgDbPool(toPoolConfig(this.options as PgConfig, password))
          inner.ready.catch(() => {})
          this.#inner = inner
          return inner
        })
      this.#starting.catch(() => {
        this.#starting = null
      })
    }
    return this.#starting
  }

  // ---------- checkout ----------

  connect(): Promise<Client>
  connect(callback: (err: Error | undefined, client: Client | undefined, done: (release?: any) => void) => void): void
  connect(callback?: (err: Error | undefined, client: Client | undefined, done: (release?: any) => void) => void): Promise<Client> | undefined {
    const p = this.#checkout()
    if (callback) {
      p.then(
        (client) => callback(undefined, client, client.release),
        (e) => callback(e, undefined, noop),
      )
      return undefined
    }
    return p
  }

  #checkout(): Promise<Client> {
    if (this.ending) return Promise.reject(new Error('Cannot use a pool after calling end on the pool'))
    const inner = this.#pool()
    if (inner instanceof Promise)
      return inner.then(
        () => this.#checkout(),
        (e) => Promise.reject(toPgError(e)),
      )
    let db: Handler
    let got: Promise<void>
    try {
      db = inner.handler(this.#group)
      got = db.acquire()
    } catch (e) {
      return Promise.reject(toPgError(e))
    }
    // An idle connection is taken synchronously: no extra tick.
    if (db._handler >= 0) return Promise.resolve(this.#bind(db))
    this.#waiting++
    return got.then(
      () => {
        this.#waiting--
        if (this.ending) {
          db.release()
          throw new Error('Cannot use a pool after calling end on the pool')
        }
        return this.#bind(db)
      },
      (e) => {
        this.#waiting--
        db.release()
        throw toPgError(e)
      },
    )
  }

  #bind(db: Handler): Client {
    const pid = attach(db._core, db._handler)
    let client = pid !== 0 ? this.#clients.get(pid) : undefined
    const fresh = client === undefined
    if (client === undefined) {
      client = new Client(this.options as PgConfig, this)
      if (pid !== 0) {
        this.#clients.set(pid, client)
        // Connections come and go: keep a bounded number of remembered ones.
        if (this.#clients.size > 4 * (this.options.max ?? 10) + 16) this.#clients.delete(this.#clients.keys().next().value as number)
      }
    }
    // A release function per checkout, as pg-pool's: a second call (or a stale one) throws.
    const owned = client
    let released = false
    owned.release = (err?: unknown) => {
      if (released) throw new Error('Release called on client which has already been released to the pool.')
      released = true
      this._released(owned, err)
    }
    client._bind(db, pid)
    this.#out.add(client)
    if (fresh && this.listenerCount('connect') > 0) this.emit('connect', client)
    if (this.listenerCount('acquire') > 0) this.emit('acquire', client)
    return client
  }

  /** @internal A client's `release(err)`: `err` (or `true`) closes its connection. */
  _released(client: Client, err: unknown): void {
    const destroy = err !== undefined && err !== null && err !== false
    this.#out.delete(client)
    const pid = client.processID
    client._unbind(destroy)
    if (destroy && pid !== undefined) this.#clients.delete(pid)
    if (this.listenerCount('release') > 0) this.emit('release', destroy && err instanceof Error ? err : undefined, client)
    if (destroy && this.listenerCount('remove') > 0) this.emit('remove', client)
    if (this.#out.size === 0 && this.#drained !== null) this.#drained()
  }

  // ---------- queries ----------

  query<T extends Submittable>(queryStream: T): T
  query<R extends any[] = any[], I = any[]>(queryConfig: QueryArrayConfig<I>, values?: QueryConfigValues<I>): Promise<QueryArrayResult<R>>
  query<R extends QueryResultRow = any, I = any[]>(queryConfig: QueryConfig<I>): Promise<QueryResult<R>>
  query<R extends QueryResultRow = any, I = any[]>(queryTextOrConfig: string | QueryConfig<I>, values?: QueryConfigValues<I>): Promise<QueryResult<R>>
  query<R extends any[] = any[], I = any[]>(queryConfig: QueryArrayConfig<I>, callback: (err: Error, result: QueryArrayResult<R>) => void): void
  query<R extends QueryResultRow = any, I = any[]>(queryTextOrConfig: string | QueryConfig<I>, callback: (err: Error, result: QueryResult<R>) => void): void
  query<R extends QueryResultRow = any, I = any[]>(
    queryText: string,
    values: QueryConfigValues<I>,
    callback: (err: Error, result: QueryResult<R>) => void,
  ): void
  query(config: any, values?: any, callback?: any): any {
    let q: ReturnType<typeof normalizeQuery>
    try {
      q = normalizeQuery(config, values, callback)
    } catch (e) {
      if (typeof values === 'function' || typeof callback === 'function') {
        const cb = (typeof callback === 'function' ? callback : values) as (e: unknown) => void
        process.nextTick(() => cb(e))
        return undefined
      }
      return Promise.reject(e)
    }
    // pg's pool.query is connect, query, release: with listeners on those events, do just that.
    const viaClient = this.listenerCount('connect') + this.listenerCount('acquire') + this.listenerCount('release') > 0
    const inner = this.#inner
    let p: Promise<Result | Result[]>
    if (viaClient || inner === null || this.ending) {
      p = this.#checkout().then((client) => {
        const done = (client as any).query({ ...q, callback: undefined }) as Promise<Result | Result[]>
        return done.then(
          (r) => {
            client.release()
            return r
          },
          (e) => {
            client.release(e)
            throw e
          },
        )
      })
    } else {
      p = this.#oneShot(inner, q.text, q.values, q.rowMode === 'array' ? 'array' : 'object', q.types)
    }
    return settle(p, q.callback)
  }

  /** One statement on any connection of the group: pgdbpool's one-shot path (pipelined). */
  #oneShot(
    inner: PgDbPool,
    text: string,
    values: readonly unknown[] | undefined,
    rowMode: RowMode,
    queryTypes: TypeSource | undefined,
  ): Promise<Result | Result[]> {
    try {
      if (typeof text !== 'string') throw new TypeError('Client was passed a query without text')
      const prepared = prepareValues(values)
      const group = inner._groupIndex(this.#group)
      const source = queryTypes ?? this.#types
      const fast = fastSet(source)
      const decode = (buf: Buffer) => decodePg(buf, rowMode, source, fast)
      return inner._core.submit<Result | Result[]>(Op.PgQuery, group, 0, decode, text, prepared, undefined, undefined, fast.chunk).then(undefined, (e) => {
        throw toPgError(e)
      })
    } catch (e) {
      return Promise.reject(toPgError(e))
    }
  }

  // ---------- LISTEN ----------

  /**
   * LISTEN on `channel` over a dedicated, watched connection (see pgdbpool's `Pool.listen`):
   * `onNotify(payload, notification)` for each notification; `onListen({ reconnected })` after
   * each LISTEN (initially and after every reconnect, when notifications may have been missed).
   * Resolves to `{ close() }` once listening. pg-boss's `db.listen(channel, onNotification,
   * onReconnect)` has this shape.
   */
  async listen(channel: string, onNotify: (payload: string, notification: Notification) => void, onListen?: ListenArg): Promise<Listener> {
    if (this.ending) throw new Error('Cannot use a pool after calling end on the pool')
    const inner = await this.#pool()
    const options = typeof onListen === 'function' ? { onListen } : (onListen ?? {})
    return startListener(inner, channel, onNotify, { ...options, group: this.#group })
  }

  // ---------- end and counts ----------

  /**
   * Stops taking work; waits for checked-out clients to be released (up to 30 s), then closes
   * the pgdbpool pool it made (never one it wraps).
   */
  end(): Promise<void>
  end(callback: (err?: Error) => void): void
  end(callback?: (err?: Error) => void): Promise<void> | undefined {
    if (this.ending) {
      const err = new Error('Called end on pool more than once')
      if (callback) {
        process.nextTick(() => callback(err))
        return undefined
      }
      return Promise.reject(err)
    }
    this.ending = true
    const p = (async () => {
      if (this.#out.size > 0) {
        let timer: NodeJS.Timeout | undefined
        await new Promise<void>((resolve) => {
          this.#drained = resolve
          timer = setTimeout(resolve, 30_000)
        })
        clearTimeout(timer)
      }
      if (this.#owned) {
        const inner = this.#inner ?? (this.#starting ? await this.#starting.catch(() => null) : null)
        if (inner !== null) await inner.close({ timeout: 5000 })
      }
      this.ended = true
    })()
    if (callback) {
      p.then(
        () => callback(),
        (e) => callback(e),
      )
      return undefined
    }
    return p
  }

  #stats(): GroupStats | undefined {
    const inner = this.#inner
    if (inner === null || inner.closed) return undefined
    return inner.stats().groups[this.#group]
  }

  /** Connections of the group (open or opening). */
  get totalCount(): number {
    const g = this.#stats()
    return g === undefined ? 0 : g.size
  }

  get idleCount(): number {
    return this.#stats()?.idle ?? 0
  }

  /** Checkouts waiting for a connection. */
  get waitingCount(): number {
    return Math.max(this.#waiting, this.#stats()?.waiting ?? 0)
  }

  get expiredCount(): number {
    return 0
  }
}

// `instanceof pg.Pool` (Prisma's PrismaPg checks it, Drizzle checks it or the class name): when
// node-postgres is installed, pg.Pool's prototype is put under ours. Every method and property
// pg.Pool has is defined here, so none of pg-pool's code ever runs on these objects.
if (realPg !== null && typeof realPg.Pool === 'function') {
  Object.setPrototypeOf(Pool.prototype, realPg.Pool.prototype)
}
