// pg-cursor's API (what Kysely's `PostgresDialect({ cursor })` calls): `client.query(new
// Cursor(text, values))` returns the cursor at once; `read(n)` gives the next rows (`[]` at the
// end), `close()` ends it. Here it is a server-side cursor (DECLARE / FETCH / CLOSE), inside the
// client's transaction or one of its own, so memory stays bounded by `n` whatever the result.
// While it is open, later queries on the client wait for it, as pg queues them behind it.

import { EventEmitter } from 'node:events'

import type { RowMode } from '../codec'
import type { Result } from './decode'
import type { TypeSource } from './types'

/** What a cursor needs of its client (see `Client`). */
export interface CursorHost {
  run(text: string, values: readonly unknown[] | undefined, rowMode: RowMode, types: TypeSource | undefined): Promise<Result>
  readonly inTransaction: boolean
}

let cursors = 0

type Callback<T> = (err: Error | undefined, value?: T) => void

export class Cursor<R = any> extends EventEmitter {
  readonly text: string
  readonly values: readonly unknown[] | undefined
  readonly #rowMode: RowMode
  readonly #types: TypeSource | undefined
  readonly #name = `pgdbpool_pg_cursor_${++cursors}`
  #host: CursorHost | null = null
  #opened: Promise<void> | null = null
  #ownTransaction = false
  #done = false
  #closed = false
  #finished!: () => void
  /** Settles when the cursor is closed (the client's later queries wait for it). */
  readonly finished: Promise<void>
  /** Columns of the result, known after the first read. */
  fields: Result['fields'] = []
  callback?: (err: Error | undefined, rows?: R[]) => void

  constructor(text: string, values?: readonly unknown[], config: { rowMode?: RowMode; types?: TypeSource } = {}) {
    super()
    this.text = text
    this.values = values
    this.#rowMode = config.rowMode === 'array' ? 'array' : 'object'
    this.#types = config.types
    this.finished = new Promise<void>((resolve) => {
      this.#finished = resolve
    })
  }

  /** Marks this object as a submittable for `client.query` (pg's contract); the client drives it. */
  submit(): void {}

  /** @internal The client this cursor runs on. */
  _attach(host: CursorHost): void {
    if (this.#host !== null) throw new Error('this cursor was already submitted to a client')
    this.#host = host
    this.#opened = this.#open(host)
    this.#opened.catch((e) => {
      this.#end()
      if (this.listenerCount('error') > 0) this.emit('error', e)
    })
  }

  async #open(host: CursorHost): Promise<void> {
    if (!host.inTransaction) {
      await host.run('BEGIN', undefined, 'object', undefined)
      this.#ownTransaction = true
    }
    try {
      await host.run(`DECLARE ${this.#name} NO SCROLL CURSOR FOR ${this.text}`, this.values, 'object', undefined)
    } catch (e) {
      if (this.#ownTransaction) await host.run('ROLLBACK', undefined, 'object', undefined).catch(() => {})
      throw e
    }
  }

  /** The next `rows` rows, `[]` once the result is exhausted. */
  read(rows: number, callback?: Callback<R[]>): Promise<R[]> {
    const p = this.#read(rows)
    if (callback) {
      p.then(
        (r) => callback(undefined, r),
        (e) => callback(e),
      )
    }
    return p
  }

  async #read(rows: number): Promise<R[]> {
    if (!Number.isInteger(rows) || rows < 1) throw new TypeError('cursor.read needs a row count >= 1')
    if (this.#host === null || this.#opened === null) throw new Error('submit the cursor with client.query(cursor) before reading it')
    await this.#opened
    if (this.#done) return []
    const result = await this.#host.run(`FETCH ${rows} FROM ${this.#name}`, undefined, this.#rowMode, this.#types)
    if (result.fields.length) this.fields = result.fields
    if (result.rows.length < rows) {
      this.#done = true
      this.emit('end', result)
      await this.close()
    }
    return result.rows as R[]
  }

  /** Closes the cursor (commits the transaction it opened). Idempotent. */
  close(callback?: (err?: Error) => void): Promise<void> {
    const p = this.#close()
    if (callback) {
      p.then(
        () => callback(),
        (e) => callback(e),
      )
    }
    return p
  }

  async #close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#done = true
    const host = this.#host
    if (host === null || this.#opened === null) return this.#end()
    try {
      await this.#opened
    } catch {
      return this.#end()
    }
    try {
      if (host.inTransaction) await host.run(`CLOSE ${this.#name}`, undefined, 'object', undefined)
      if (this.#ownTransaction) await host.run('COMMIT', undefined, 'object', undefined)
    } catch (e) {
      // A transaction of the cursor's own that failed (a read failed) just goes; the read
      // reported the error. In the caller's transaction the failure is theirs to see.
      if (!this.#ownTransaction) throw e
      await host.run('ROLLBACK', undefined, 'object', undefined).catch(() => {})
    } finally {
      this.#end()
    }
  }

  #end(): void {
    this.#closed = true
    this.#done = true
    this.#finished()
  }
}
