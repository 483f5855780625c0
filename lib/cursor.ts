// Results too big to hold: a server-side cursor read in batches (DECLARE ... CURSOR, FETCH n),
// so memory stays bounded by the batch size whatever the size of the result.

import type { FieldInfo, QueryResult, RowMode } from './codec'

/** The handler operations a cursor needs. */
export interface CursorHost {
  query<R>(text: string, params?: readonly unknown[], options?: { rowMode?: RowMode }): Promise<QueryResult<R>>
  readonly inTransaction: boolean
}

export interface CursorOptions {
  /** Rows fetched per round trip (default 1000). */
  batchSize?: number
  rowMode?: RowMode
}

let cursorCount = 0

/**
 * A server-side cursor on one handler. Iterate it with `for await (const row of cursor)`, or call
 * `read()` for the next batch. It lives in a transaction: the handler's own one when it is in
 * one (then it ends with it), else one the cursor opens and commits on `close()`.
 */
export class Cursor<R = Record<string, unknown>> implements AsyncIterable<R> {
  readonly #host: CursorHost
  readonly #name = `pgdbpool_cursor_${++cursorCount}`
  readonly #batchSize: number
  readonly #rowMode: RowMode
  readonly #opened: Promise<void>
  #ownTransaction = false
  #done = false
  #closed = false
  /** Columns of the result, known after the first `read()`. */
  fields: FieldInfo[] = []

  constructor(host: CursorHost, text: string, params: readonly unknown[] | undefined, options: CursorOptions = {}, autocommit = true) {
    const batchSize = options.batchSize ?? 1000
    if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > 2_147_483_647)
      throw new TypeError('cursor batchSize must be an integer from 1 to 2147483647')
    this.#host = host
    this.#batchSize = batchSize
    this.#rowMode = options.rowMode ?? 'object'
    this.#opened = this.#open(text, params, autocommit)
    // `read()` reports a failed open; the bare promise must not be an unhandled rejection.
    this.#opened.catch(() => {})
  }

  async #open(text: string, params: readonly unknown[] | undefined, autocommit: boolean): Promise<void> {
    // An `autocommit: false` group opens a transaction at the DECLARE by itself; any other
    // handler needs one for the cursor to outlive its statement.
    if (autocommit && !this.#host.inTransaction) {
      await this.#host.query('BEGIN')
      this.#ownTransaction = true
    }
    await this.#host.query(`DECLARE ${this.#name} NO SCROLL CURSOR FOR ${text}`, params)
  }

  /** The next batch of at most `batchSize` rows; an empty array once the result is exhausted. */
  async read(): Promise<R[]> {
    await this.#opened
    if (this.#done) return []
    const result = await this.#host.query<R>(`FETCH ${this.#batchSize} FROM ${this.#name}`, undefined, { rowMode: this.#rowMode })
    if (result.fields.length) this.fields = result.fields
    if (result.rows.length < this.#batchSize) {
      this.#done = true
      await this.close()
    }
    return result.rows
  }

  /** Closes the cursor (and commits the transaction it opened). Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#done = true
    try {
      await this.#opened
    } catch {
      return
    }
    try {
      await this.#host.query(`CLOSE ${this.#name}`)
      if (this.#ownTransaction) await this.#host.query('COMMIT')
    } catch (e) {
      if (this.#ownTransaction) await this.#host.query('ROLLBACK').catch(() => {})
      throw e
    }
  }

  async *[Symbol.asyncIterator](): AsyncIterator<R> {
    let failed = false
    try {
      for (;;) {
        const rows = await this.read()
        if (rows.length === 0) return
        yield* rows
      }
    } catch (e) {
      failed = true
      throw e
    } finally {
      // After a failure the transaction is aborted: closing must not hide the real error.
      if (failed) await this.close().catch(() => {})
      else await this.close()
    }
  }
}
