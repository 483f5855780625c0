// The boundary with the Rust core: operations of one tick go over as one Buffer (`submit`),
// results come back in batches (`drain`), and promises are matched to them by id. The only module
// that loads the generated binding. The byte formats are crate/src/bindings/wire.rs's.

import { constants as bufferConstants } from 'node:buffer'

import { ByteWriter, QueryResult, RowMode, writeParams } from './codec'
import { AbortError, DBQueryError, PgDbPoolError, fromNative, fromWire } from './errors'

export type NativePool = import('../binding').NativePool

// eslint-disable-next-line @typescript-eslint/no-require-imports
const binding: typeof import('../binding') = require('../binding.js')

/**
 * Creates (or, with `shared`, joins) the native pool for `configJson`; `wake` is called when
 * completions are queued (`Core.wakeUp`). Throws the native error as it is (see `fromNative`).
 */
export function openNativePool(configJson: string, shared: boolean, wake: () => void): NativePool {
  return binding.NativePool.open(configJson, shared, wake)
}

// The largest result the core builds: what one Buffer can hold here (and a u32 can count).
// PGDBPOOL_MAX_RESULT_BYTES lowers it (for tests of the limit).
binding.setMaxResultBytes(Number(process.env.PGDBPOOL_MAX_RESULT_BYTES) || Math.min(bufferConstants.MAX_LENGTH, 2 ** 32 - 1) - 64)

/**
 * Cores with unsettled operations. While there are any, one ref'd timer keeps the event loop
 * alive, and the set keeps those cores (and the promises they owe) reachable: the core's
 * wake-up reaches a core only through a WeakRef, so that a pool nobody uses any more, closed or
 * not, can be collected.
 */
const busy = new Set<Core>()
const keepAlive = setInterval(() => {}, 0x7fffffff)
keepAlive.unref()

function becameBusy(core: Core): void {
  if (busy.size === 0) keepAlive.ref()
  busy.add(core)
}

function becameIdle(core: Core): void {
  busy.delete(core)
  if (busy.size === 0) keepAlive.unref()
}

// ---------- the wire formats ----------
// Kept in step with crate/src/bindings/wire.rs: every `export const enum` of this file is a
// module there with the same names and values (`Op.PgQuery` is `op::PG_QUERY`), and its
// `cargo test` (lib_native_ts_mirrors_the_wire_constants) fails when they differ. The layouts
// are documented there.

/**
 * Operation codes: the low six bits of a submission record's op byte. A record is
 * `u8 op | u32 id | u32 subject | u32 acquire group`, then chunks: `subject` is the group index
 * of a one-shot statement (`Query`, `PgQuery`) and the handler number of a handler operation;
 * `acquire group` is the group an `Acquire` takes its connection from (0 for the others).
 */
export const enum Op {
  /** A one-shot statement; chunks: SQL, parameters. */
  Query = 1,
  /** A statement on the handler's connection; chunks: SQL, parameters. */
  HandlerQuery = 2,
  /** A handler's checkout. */
  Acquire = 3,
  Commit = 4,
  Rollback = 5,
  /** `pgdbpool/pg` (lib/pg): a one-shot query in pg mode; chunks: SQL, parameters, options. */
  PgQuery = 6,
  /** `pgdbpool/pg`: a handler query in pg mode; chunks: SQL, parameters, options. */
  PgHandlerQuery = 7,
}

/** Flags in the top two bits of a submission record's op byte. */
export const enum OpFlag {
  /** The operation has an `AbortSignal` (`abort` / `cancel` may name its id). */
  Abortable = 0x80,
  /** Aborted before it was handed over: the core answers it without running it. */
  Aborted = 0x40,
}

/** The status byte of a completion record: what its payload is. */
export const enum Status {
  /** A result Buffer (lib/codec.ts's layout; empty for operations without a result). */
  Result = 0,
  /** An error, as JSON (`fromWire`). */
  Error = 1,
  /** Id 0: lifecycle events, a JSON array. */
  Events = 2,
  /** Id 0: an asynchronous message of a pg client's session: `u32 subscription | u8 type | body`. */
  AsyncMessage = 3,
}

/** Byte offsets of a completion record's fields: `u32 id | u8 status | u32 len | payload`. */
export const enum CompletionField {
  Id = 0,
  Status = 4,
  Length = 5,
  /** Also the size of the record's header. */
  Payload = 9,
}

interface Pending {
  /** False once the promise settled early (aborted); the slot waits for the core's answer. */
  waiting: boolean
  resolve: (value: any) => void
  reject: (error: Error) => void
  /** How to decode the result Buffer; `null` for operations without a result. */
  rowMode: RowMode | Decode | null
  /** Detaches the abort listener, if the operation has a signal. */
  detach?: () => void
  /** For an operation with a signal: where its op byte is in the writer, and in which batch. */
  mark?: number
  batch?: number
}

/** A decoder of its own for an operation's result Buffer (lib/pg). */
export type Decode = (buf: Buffer) => unknown

/** Largest submission buffer kept between ticks; a bigger one is dropped after use. */
const KEEP_BUFFER = 1 << 20

/** Size of the buffer completions are taken into when they fit (most batches are far smaller). */
const REUSED_COMPLETIONS = 64 * 1024

/** Bytes of results decoded in one go before the callers' continuations get to run. */
const YIELD_BYTES = 4096

/**
 * Queues operations for the core and matches its batched completions to their promises. While
 * anything is pending a ref'd timer keeps the event loop alive (the core's wake-up is weak, so
 * an idle pool never holds the process open).
 */
export class Core {
  /**
   * In-flight operations by slot; an operation's id is its slot + 1 (id 0 is the core's events).
   * A slot is reused only after the core answered its id, so ids never collide. An array, not
   * a Map: a Map's discarded hash tables keep pointing at settled operations, and through their
   * promises whole results stayed alive through every scavenge (30 % survival on 100-row results).
   */
  readonly #slots: Array<Pending | undefined> = []
  readonly #freeSlots: number[] = []
  /** Promises not settled yet; while there are any the event loop stays alive. */
  #unsettled = 0
  readonly #writer = new ByteWriter()
  /** Ids written since the last flush, to fail them if the core refuses the batch. */
  #batch: number[] = []
  /** Counts flushes, so that an abort knows whether its operation is still in the writer. */
  #batchNumber = 0
  #scheduled = false
  #nextHandler = 0
  readonly #freeHandlers: number[] = []
  native!: NativePool
  /** The native object's number, for the checkout calls that skip napi-rs's class lookup. */
  #id = 0
  /** Receives the core's lifecycle events (a JSON array). */
  onEvents: (json: string) => void = () => {}
  /** Receives asynchronous messages of sessions held by pg clients (lib/pg): `u32 subscription | u8 type | body`. */
  onAsync: (message: Buffer) => void = () => {}
  decode!: <R>(buf: Buffer, rowMode: RowMode) => QueryResult<R>

  /**
   * The function the core calls when results are queued. It holds this object only weakly:
   * the core holds it strongly, and the core lives as long as this object.
   */
  wakeUp(): () => void {
    const self = new WeakRef(this)
    return () => self.deref()?.drain()
  }

  attach(native: NativePool): void {
    this.native = native
    this.#id = native.id
  }

  /** Gives `handler` an idle connection of group `group` now, if one is at hand. */
  tryAcquire(group: number, handler: number): boolean {
    try {
      return binding.tryAcquireHandler(this.#id, group, handler)
    } catch (e) {
      throw fromNative(e)
    }
  }

  /**
   * Lets go of `handler`; with `handOver`, true when its clean connection stays under the same
   * number for this thread's next waiting checkout (nobody but `ownWaiting` queued in the core).
   */
  release(handler: number, handOver: boolean, ownWaiting: number): boolean {
    return binding.releaseHandler(this.#id, handler, handOver, ownWaiting)
  }

  /** A handler number for the core; give it back with `freeHandler` once released. */
  handler(): number {
    return this.#freeHandlers.pop() ?? this.#nextHandler++
  }

  freeHandler(handler: number): void {
    this.#freeHandlers.push(handler)
  }

  /**
   * Queues one operation (a submission record, see `Op`: `subject` is the group index of a
   * one-shot statement or the handler number of a handler operation, `acquireGroup` the group of
   * an `Acquire`, else 0; `extra` the options chunk of the pg operations); it goes to the core
   * with the rest of this tick's operations.
   *
   * With a `signal`, an abort rejects the promise with `AbortError` and tells the core: an
   * operation not handed over yet never runs, a handler statement still queued behind another
   * is dropped and the running one is cancelled on the server, a one-shot statement still
   * waiting for a connection gives up. `mayAbort`, if given, is asked first: false ignores the
   * abort (a handler statement after `release()`).
   */
  submit<T>(
    op: Op,
    subject: number,
    acquireGroup: number,
    rowMode: RowMode | Decode | null,
    sql?: string,
    params?: readonly unknown[],
    signal?: AbortSignal,
    mayAbort?: () => boolean,
    extra?: Uint8Array,
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (signal?.aborted) {
        reject(new AbortError(signal.reason))
        return
      }
      const slot = this.#freeSlots.length > 0 ? this.#freeSlots.pop()! : this.#slots.length
      const id = slot + 1
      const w = this.#writer
      const mark = w.pos
      try {
        w.u8(signal ? op | OpFlag.Abortable : op)
        w.u32(id)
        w.u32(subject)
        w.u32(acquireGroup)
        if (sql !== undefined) {
          w.text(sql)
          writeParams(w, params)
        }
        if (extra !== undefined) {
          w.ensure(4 + extra.length)
          w.u32(extra.length)
          w.buf.set(extra, w.pos)
          w.pos += extra.length
        }
      } catch (e) {
        w.pos = mark
        if (slot < this.#slots.length) this.#freeSlots.push(slot)
        reject(
          e instanceof RangeError ? new DBQueryError(`the statement or its parameters are too large to send (${e.message})`, {}, { cause: e }) : (e as Error),
        )
        return
      }
      if (this.#unsettled++ === 0) becameBusy(this)
      const pending: Pending = { waiting: true, resolve, reject, rowMode }
      if (signal) {
        pending.mark = mark
        pending.batch = this.#batchNumber
        const aborted = () => {
          if (!pending.waiting || (mayAbort && !mayAbort())) return
          if (pending.batch === this.#batchNumber) {
            // Still in the writer: the core answers it without running it.
            this.#writer.buf[mark] |= OpFlag.Aborted
          } else if (op === Op.HandlerQuery) {
            this.native.cancel(subject, id)
          } else {
            this.native.abort(id)
          }
          // The promise settles now; the core's late answer finds no one waiting and is dropped.
          this.#settle(pending)
          pending.reject(new AbortError(signal.reason))
        }
        signal.addEventListener('abort', aborted, { once: true })
        pending.detach = () => signal.removeEventListener('abort', aborted)
      }
      this.#slots[slot] = pending
      this.#batch.push(id)
      if (!this.#scheduled) {
        this.#scheduled = true
        queueMicrotask(this.#scheduledFlush)
      }
    })
  }

  /** While completions are being settled, their callers' next operations wait to go as one batch. */
  readonly #scheduledFlush = (): void => {
    if (this.#completions === null) this.flush()
  }

  /** Hands the queued operations to the core now (before a synchronous call that must see them). */
  readonly flush = (): void => {
    this.#scheduled = false
    const w = this.#writer
    if (w.pos === 0) return
    const batch = this.#batch
    this.#batch = []
    this.#batchNumber++
    try {
      // The core copies the bytes, so the buffer is reused. Quiet: nothing but this batch is in
      // flight (a lone statement may then run on this thread's event loop, not the worker).
      this.native.submit(w.buf, w.pos, this.#unsettled === batch.length)
    } catch (e) {
      const native = fromNative(e)
      const error =
        native instanceof PgDbPoolError && native.code === 'INTERNAL'
          ? native
          : new PgDbPoolError('INTERNAL', `the native core refused a submission: ${native.message}`, { cause: e })
      // The core saw none of these ids: their slots are free again.
      for (const id of batch) {
        const op = this.#answered(id)
        if (op !== undefined && this.#settle(op)) op.reject(error)
      }
    } finally {
      w.pos = 0
      if (w.buf.length > KEEP_BUFFER) w.buf = Buffer.allocUnsafe(16 * 1024)
    }
  }

  /** Frees the slot of an id the core has answered; returns its operation. */
  #answered(id: number): Pending | undefined {
    const op = this.#slots[id - 1]
    if (op === undefined) return undefined
    this.#slots[id - 1] = undefined
    this.#freeSlots.push(id - 1)
    return op
  }

  /** Marks the operation settled; false if it already was. The caller settles its promise. */
  #settle(op: Pending): boolean {
    if (!op.waiting) return false
    op.waiting = false
    op.detach?.()
    if (--this.#unsettled === 0) becameIdle(this)
    return true
  }

  /**
   * Called by the core when completion records are queued (see `Status`, `CompletionField`).
   * The core hands them over in chunks of whole records; chunks wait here in order while one is
   * settled.
   */
  readonly drain = (): void => {
    let buf: Buffer
    let end: number
    try {
      // Usually the batch fits the reused buffer; one that does not, or one that arrives while
      // another is still being settled, comes as a Buffer of its own.
      end = this.#completions === null ? this.native.takeCompletionsInto(this.#reused) : -1
      if (end >= 0) {
        buf = this.#reused
      } else {
        buf = this.native.takeCompletions()
        end = buf.length
      }
    } catch (e) {
      // Nothing was taken (the core keeps the queue when the copy fails); it wakes us again.
      process.emitWarning(`pgdbpool could not take completions from its core: ${(e as Error)?.message ?? e}`, 'PgDbPoolWarning')
      return
    }
    if (end === 0) return
    if (this.#completions === null) {
      this.#completions = buf
      this.#completionsPos = 0
      this.#completionsEnd = end
      this.#settleCompletions()
    } else {
      // A chunk is still being settled over microtasks; this one queues behind it.
      this.#chunks.push(buf)
    }
  }

  /**
   * Where completions are taken to when they fit, only while nothing is being settled (a batch
   * that arrives meanwhile comes as a Buffer of its own). Nothing keeps a slice of it beyond the
   * synchronous decoding of a record: the decoders copy what they return.
   */
  readonly #reused = Buffer.allocUnsafeSlow(REUSED_COMPLETIONS)
  /** Completions taken from the core and not settled yet, from `#completionsPos` to `#completionsEnd`. */
  #completions: Buffer | null = null
  #completionsPos = 0
  #completionsEnd = 0
  /** Chunks taken while another was being settled. */
  #chunks: Buffer[] = []

  /**
   * Settles completions in order. After decoding YIELD_BYTES of results it lets the callers'
   * continuations run before decoding more, so each caller's rows can die young: decoding a
   * whole batch first kept megabytes alive through every scavenge.
   */
  readonly #settleCompletions = (): void => {
    const buf = this.#completions!
    const end = this.#completionsEnd
    let pos = this.#completionsPos
    let decoded = 0
    while (pos < end) {
      const id = buf.readUInt32BE(pos + CompletionField.Id)
      const status = buf[pos + CompletionField.Status]
      const len = buf.readUInt32BE(pos + CompletionField.Length)
      const start = pos + CompletionField.Payload
      pos = start + len
      if (id === 0) {
        if (status === Status.AsyncMessage) this.onAsync(buf.subarray(start, pos))
        else this.onEvents(buf.toString('utf8', start, pos))
        continue
      }
      const op = this.#answered(id)
      if (op === undefined || !this.#settle(op)) continue
      if (status === Status.Error) {
        op.reject(fromWire(buf.toString('utf8', start, pos)))
      } else if (op.rowMode === null) {
        op.resolve(undefined)
      } else {
        try {
          const slice = buf.subarray(start, pos)
          op.resolve(typeof op.rowMode === 'function' ? op.rowMode(slice) : this.decode(slice, op.rowMode))
        } catch (e) {
          // decodeResult throws DBQueryError for what it cannot read; anything else is ours.
          op.reject(e instanceof PgDbPoolError ? e : new DBQueryError(`the result could not be decoded: ${(e as Error)?.message ?? e}`, {}, { cause: e }))
        }
        decoded += len
        if (decoded >= YIELD_BYTES && pos < end) {
          this.#completionsPos = pos
          queueMicrotask(this.#settleCompletions)
          return
        }
      }
    }
    const next = this.#chunks.shift()
    if (next !== undefined) {
      this.#completions = next
      this.#completionsPos = 0
      this.#completionsEnd = next.length
      queueMicrotask(this.#settleCompletions)
      return
    }
    this.#completions = null
    if (this.#scheduled) this.flush()
  }
}
