// A `Pool`: the native pool over the configured endpoints, one `Checkout` queue per group, the
// core's events re-emitted, and the pool-level entry points (one-shot `query`, `handler`,
// `withHandler`, `listen`, `stats`, `close`).

import { EventEmitter } from 'node:events'
import { inspect } from 'node:util'

import { Config, NormalizedConfig, nativeConfigJson, normalizeConfig } from './config'
import { QueryResult, decodeResult } from './codec'
import { PoolClosedError, UnconfiguredGroupError, fromNative } from './errors'
import { Checkout } from './checkout'
import type { PoolEvent, PoolEvents } from './events'
import { type GroupContext, Handler, runWithHandler } from './handler'
import { Core, NativePool, Op, openNativePool } from './native'
import { Listener, ListenOptions, Notification, startListener } from './pg/listen'
import { type QueryInput, type QueryOptions, splitInput } from './statement'
import type { GroupStats, PoolStats } from './stats'

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

export interface CloseOptions {
  /** Milliseconds to let checked-out handlers finish before their work is cancelled. */
  timeout?: number
}

/**
 * A connection pool over one or more PostgreSQL endpoints. Most programs use the module-level
 * `init()` / `Handler` / `query()` functions, which share one default `Pool`; create `Pool`s
 * directly to hold several independent pools in one process.
 */
export class Pool extends EventEmitter<PoolEvents> {
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
  notify<E extends keyof PoolEvents>(event: E, ...args: PoolEvents[E]): void {
    if (this.listenerCount(event) === 0) return
    try {
      // EventEmitter's typings cannot relate a generic event name to its arguments.
      this.emit<keyof PoolEvents>(event, ...(args as PoolEvents[keyof PoolEvents]))
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
