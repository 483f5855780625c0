// A `Handler`: one connection of a group, held from its first statement to `release()`, so a
// transaction (autocommit off) spans its statements. Taking the connection goes through the
// group's `Checkout` queue.

import { inspect } from 'node:util'

import type { QueryResult, RowMode } from './codec'
import { Cursor, type CursorOptions } from './cursor'
import { Checkout } from './checkout'
import { defaultPool } from './default-pool'
import { PoolClosedError } from './errors'
import type { LeakEvent } from './events'
import { Core, Op } from './native'
import type { Pool } from './pool'
import { type QueryInput, type QueryOptions, splitInput } from './statement'

// Node 18.x before 18.18 lacks the well-known symbol that `await using` looks up.
if (typeof Symbol.asyncDispose !== 'symbol') {
  Object.defineProperty(Symbol, 'asyncDispose', { value: Symbol.for('Symbol.asyncDispose') })
}

export interface AcquireOptions {
  /** Gives up waiting for a connection when this signal aborts (rejects with `AbortError`). */
  signal?: AbortSignal
}

/** What a `Handler` needs of its pool: the core and the checkout queue of its group. */
export interface GroupContext {
  core: Core
  checkout: Checkout
  autocommit: boolean
  pool: Pool
  leakThreshold: number
}

const RESOLVED = Promise.resolve()

/** Runs `fn` with `db`; commits when it returns, rolls back when it throws, releases either way. */
export async function runWithHandler<T>(db: Handler, fn: (db: Handler) => Promise<T> | T): Promise<T> {
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
      const taken = performance.now()
      // A timer can fire up to a loop iteration early against the clock (it counts from the
      // loop's cached time): checked, and re-armed for the rest, so a report is never early.
      const check = () => {
        const held = performance.now() - taken
        if (held < leakThreshold) {
          this.#leakTimer = setTimeout(check, Math.ceil(leakThreshold - held))
          this.#leakTimer.unref()
          return
        }
        const leak: LeakEvent = { group: this.group, heldMs: Math.floor(held), stack }
        if (pool.listenerCount('leak') > 0) pool.notify('leak', leak)
        else
          process.emitWarning(
            `a handler of group '${leak.group}' has held its connection for ${leak.heldMs} ms (leak_threshold); ${stack}`,
            'PgDbPoolLeakWarning',
          )
      }
      this.#leakTimer = setTimeout(check, leakThreshold)
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
   * A prepared-query call: `SELECT * FROM "SQLPrepare"."ExecuteQuery"($1, ...)` (the
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
   * @internal lib/pg: releases the connection closed rather than pooled (a session left in a
   * state nobody else may inherit: a destroyed pg client, a dropped LISTEN connection).
   */
  _discard(): Promise<void> {
    if (this.#handler >= 0) {
      this.#ctx.core.flush()
      this.#ctx.core.native.discard(this.#handler)
    }
    return this.release()
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
