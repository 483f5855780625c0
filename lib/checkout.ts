// Handler checkouts of one group, as seen from one JS thread.
//
// An idle connection is taken synchronously. Otherwise the checkout waits here, in a FIFO with
// its own deadline, and is served by whichever comes first: a handler of this thread releasing
// a clean connection (handed straight over, no round trip through the core), or an acquire
// request queued in the core (which also opens new connections and receives connections
// released by other threads and by one-shot queries).

import { Core, Op } from './native'
import { AbortError, PoolClosedError, PoolTimeoutError } from './errors'

interface Waiter {
  resolve: (handler: number) => void
  reject: (error: Error) => void
  deadline: number
  /** Served, timed out or aborted. */
  done: boolean
  signal?: AbortSignal
  onAbort?: () => void
}

export interface CheckoutLimits {
  name: string
  index: number
  acquireTimeout: number
  maxWaiting: number
}

export class Checkout {
  readonly #core: Core
  readonly #limits: CheckoutLimits
  #queue: Waiter[] = []
  #head = 0
  /** Waiters not yet done. */
  #live = 0
  /** Acquire requests queued in the core for this queue. */
  #requested = 0
  #timer: NodeJS.Timeout | undefined
  #closed = false
  /** Checkouts that had to wait here, and those that gave up at their deadline. */
  waits = 0
  timeouts = 0

  constructor(core: Core, limits: CheckoutLimits) {
    this.#core = core
    this.#limits = limits
  }

  get waiting(): number {
    return this.#live
  }

  /**
   * A handler number holding a connection when one is idle right now and nobody waits before
   * this caller; otherwise -1, and the caller goes on with `wait`.
   */
  take(signal?: AbortSignal): number {
    if (signal?.aborted) throw new AbortError(signal.reason)
    if (this.#closed) throw new PoolClosedError()
    if (this.#live > 0) return -1
    const core = this.#core
    const handler = core.handler()
    if (core.tryAcquire(this.#limits.index, handler)) return handler
    core.freeHandler(handler)
    return -1
  }

  /** Queues a checkout that `take` could not serve: exactly one of `resolve` or `reject` follows. */
  wait(resolve: (handler: number) => void, reject: (error: Error) => void, signal?: AbortSignal): void {
    if (this.#live >= this.#limits.maxWaiting) {
      this.timeouts++
      throw new PoolTimeoutError(`group '${this.#limits.name}': ${this.#live} checkouts already waiting (max_waiting)`)
    }
    const waiter: Waiter = { resolve, reject, deadline: Date.now() + this.#limits.acquireTimeout, done: false }
    if (signal) {
      waiter.signal = signal
      waiter.onAbort = () => this.#finish(waiter, new AbortError(signal.reason))
      signal.addEventListener('abort', waiter.onAbort, { once: true })
    }
    this.#queue.push(waiter)
    this.#live++
    this.waits++
    if (this.#timer === undefined) this.#arm()
    if (this.#requested < this.#live) this.#request()
  }

  /**
   * Releases `handler`: straight to the first waiter when the core agrees the connection is
   * clean and nobody else is queued there, else back to the pool.
   */
  release(handler: number): void {
    const core = this.#core
    core.flush()
    if (core.release(handler, this.#live > 0, this.#requested)) {
      if (this.#serve(handler)) return
      core.release(handler, false, 0)
    }
    core.freeHandler(handler)
  }

  /** Stops taking checkouts; fails those still waiting once the pool has closed. */
  close(): void {
    this.#closed = true
  }

  failAll(error: Error): void {
    this.#closed = true
    for (let w = this.#next(); w !== undefined; w = this.#next()) this.#finish(w, error)
  }

  #request() {
    const core = this.#core
    const handler = core.handler()
    this.#requested++
    core.submit<void>(Op.Acquire, handler, this.#limits.index, null).then(
      () => {
        this.#requested--
        if (!this.#serve(handler)) {
          core.flush()
          core.release(handler, false, 0)
          core.freeHandler(handler)
        }
      },
      (error: Error) => {
        this.#requested--
        core.flush()
        core.release(handler, false, 0)
        core.freeHandler(handler)
        // Waiters keep their own deadlines; a request that timed out in the core is renewed.
        if (error instanceof PoolTimeoutError) {
          if (this.#requested < this.#live && !this.#closed) this.#request()
          return
        }
        if (error instanceof PoolClosedError) return
        const first = this.#next()
        if (first !== undefined) this.#finish(first, error)
        if (this.#requested < this.#live && !this.#closed) this.#request()
      },
    )
  }

  /** Gives `handler` to the first live waiter; false when nobody waits. */
  #serve(handler: number): boolean {
    const waiter = this.#next()
    if (waiter === undefined) return false
    this.#settle(waiter)
    waiter.resolve(handler)
    return true
  }

  /** The first live waiter, or undefined; compacts the queue as it goes. */
  #next(): Waiter | undefined {
    while (this.#head < this.#queue.length) {
      const waiter = this.#queue[this.#head]
      if (!waiter.done) return waiter
      this.#head++
    }
    if (this.#head > 0) {
      this.#queue = []
      this.#head = 0
    }
    return undefined
  }

  #settle(waiter: Waiter) {
    waiter.done = true
    this.#live--
    if (waiter.signal && waiter.onAbort) waiter.signal.removeEventListener('abort', waiter.onAbort)
    if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head)
      this.#head = 0
    }
    if (this.#live === 0 && this.#timer !== undefined) {
      clearTimeout(this.#timer)
      this.#timer = undefined
    }
  }

  #finish(waiter: Waiter, error: Error) {
    if (waiter.done) return
    this.#settle(waiter)
    waiter.reject(error)
  }

  /** One timer, for the oldest waiter's deadline. */
  #arm() {
    const first = this.#next()
    if (first === undefined) return
    this.#timer = setTimeout(
      () => {
        this.#timer = undefined
        const now = Date.now()
        for (let w = this.#next(); w !== undefined && w.deadline <= now; w = this.#next()) {
          this.timeouts++
          this.#finish(w, new PoolTimeoutError(`group '${this.#limits.name}': no connection free within acquire_timeout (${this.#limits.acquireTimeout} ms)`))
        }
        if (this.#live > 0 && this.#timer === undefined) this.#arm()
      },
      Math.max(0, first.deadline - Date.now()),
    )
  }
}
