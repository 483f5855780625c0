// Pool-level LISTEN (`pool.listen(channel, onNotify)` on both APIs): one dedicated connection per
// pool and group carries every channel listened to there. It is watched: the end of its
// connection is reported by the core at once, and a heartbeat checks that it still answers,
// still listens and is not read-only (a failover demoted its server). When it is lost, a new
// connection is taken (the group's balancing and failover pick where) and every channel is
// LISTENed again; each listener's `onListen({ reconnected: true })` then says notifications may
// have been missed in between. lib/pool.ts imports this module, so it loads nothing of
// node-postgres: loading pgdbpool does not load node-postgres.

import type { Handler } from '../handler'
import type { Pool } from '../pool'
import { escapeIdentifier } from './escape'
import { MESSAGE_END, MESSAGE_NOTIFICATION, attach, detach, parseNotification, subscribe } from './session'
import type { Notification } from './session'

export type { Notification }

export interface ListenOptions {
  /** Group whose connection carries the LISTEN; `'default'` unless given. */
  group?: string
  /**
   * Called after each LISTEN of this channel: once at the start (`reconnected: false`), and
   * after every reconnect (`reconnected: true`: notifications sent meanwhile may be lost).
   */
  onListen?: (info: { reconnected: boolean }) => void
  /** Milliseconds between heartbeats on the listening connection (default 10 000). */
  heartbeat?: number
}

/** A running LISTEN; `close()` stops it (UNLISTEN once nobody else listens on the channel). */
export interface Listener {
  readonly channel: string
  close(): Promise<void>
}

interface Entry {
  onNotify: (payload: string, notification: Notification) => void
  onListen?: (info: { reconnected: boolean }) => void
  /** LISTENed at least once already. */
  listened: boolean
}

const BACKOFF_MIN = 100
const BACKOFF_MAX = 5000

class Hub {
  readonly channels = new Map<string, Set<Entry>>()
  #db: Handler | null = null
  /** Channels LISTENed on the current connection. */
  #listening = new Set<string>()
  #subscription = 0
  #timer: NodeJS.Timeout | undefined
  #connecting: Promise<void> | null = null
  #attempt = 0
  #closed = false
  /** Bumped for each connection, so late events of an old one are ignored. */
  #generation = 0

  constructor(
    readonly pool: Pool,
    readonly group: string,
    readonly heartbeat: number,
    readonly onEmpty: () => void,
  ) {}

  /** Adds a listener; resolves once its channel is LISTENed. */
  async add(channel: string, entry: Entry): Promise<void> {
    let set = this.channels.get(channel)
    const fresh = set === undefined
    if (set === undefined) {
      set = new Set()
      this.channels.set(channel, set)
    }
    set.add(entry)
    try {
      if (this.#db === null) await this.#connect(true)
      if (fresh && !this.#listening.has(channel)) await this.#listen(channel)
    } catch (e) {
      set.delete(entry)
      if (set.size === 0) this.channels.delete(channel)
      if (this.channels.size === 0) this.#shutdown()
      throw e
    }
    if (!entry.listened) {
      entry.listened = true
      entry.onListen?.({ reconnected: false })
    }
  }

  async remove(channel: string, entry: Entry): Promise<void> {
    const set = this.channels.get(channel)
    if (set === undefined || !set.delete(entry)) return
    if (set.size > 0) return
    this.channels.delete(channel)
    if (this.channels.size === 0) {
      this.#shutdown()
      return
    }
    this.#listening.delete(channel)
    await this.#db?.query(`UNLISTEN ${escapeIdentifier(channel)}`).catch(() => {})
  }

  async #listen(channel: string): Promise<void> {
    const db = this.#db
    if (db === null) throw new Error('the listening connection was lost')
    await db.query(`LISTEN ${escapeIdentifier(channel)}`)
    if (db === this.#db) this.#listening.add(channel)
  }

  /** Opens the listening connection (retrying with backoff unless `first`). */
  #connect(first: boolean): Promise<void> {
    if (this.#connecting === null) {
      this.#connecting = this.#open(first).finally(() => {
        this.#connecting = null
      })
    }
    return this.#connecting
  }

  async #open(first: boolean): Promise<void> {
    for (;;) {
      if (this.#closed) return
      const db = this.pool.handler(this.group)
      const generation = ++this.#generation
      try {
        await db.acquire()
        const core = db._core
        const handler = db._handler
        attach(core, handler)
        this.#subscription = subscribe(core, handler, (kind, body) => this.#message(generation, kind, body))
        this.#db = db
        this.#listening = new Set()
        for (const channel of this.channels.keys()) await this.#listen(channel)
        this.#attempt = 0
        this.#arm(generation)
        // Listeners that had listened before may have missed notifications meanwhile.
        for (const set of this.channels.values()) {
          for (const entry of set) {
            if (entry.listened) entry.onListen?.({ reconnected: true })
          }
        }
        return
      } catch (e) {
        if (this.#db === db) this.#db = null
        this.#drop(db)
        if (first || this.#closed || (e as { code?: string }).code === 'POOL_CLOSED') {
          if (!first) this.#shutdown()
          throw e
        }
        const delay = Math.min(BACKOFF_MAX, BACKOFF_MIN * 2 ** this.#attempt++) * (0.5 + Math.random() / 2)
        await new Promise((resolve) => setTimeout(resolve, delay))
      }
    }
  }

  #message(generation: number, kind: number, body: Buffer): void {
    if (generation !== this.#generation) return
    if (kind === MESSAGE_NOTIFICATION) {
      const notification = parseNotification(body)
      const set = this.channels.get(notification.channel)
      if (set === undefined) return
      for (const entry of [...set]) {
        try {
          entry.onNotify(notification.payload, notification)
        } catch (e) {
          process.emitWarning(`a pgdbpool listen callback threw: ${(e as Error)?.stack ?? e}`, 'PgDbPoolListenerWarning')
        }
      }
    } else if (kind === MESSAGE_END) {
      this.#lost()
    }
  }

  /** Heartbeat: the connection answers, still listens to every channel, and is not read-only. */
  #arm(generation: number): void {
    this.#timer = setTimeout(() => {
      this.#timer = undefined
      const db = this.#db
      if (db === null || generation !== this.#generation) return
      let late: NodeJS.Timeout | undefined
      const deadline = new Promise<never>((_, reject) => {
        late = setTimeout(() => reject(new Error('LISTEN heartbeat timed out')), Math.max(1000, Math.min(5000, this.heartbeat)))
      })
      const check = db.query<{ ro: string; channels: string[] }>(
        "SELECT current_setting('transaction_read_only') AS ro, array(SELECT pg_listening_channels()) AS channels",
      )
      Promise.race([check, deadline])
        .then((r) => {
          const row = r.rows[0]
          const missing = [...this.channels.keys()].some((c) => !row.channels.includes(c))
          if (row.ro === 'on' || missing) throw new Error('the listening connection turned read-only or lost its LISTEN')
          if (generation === this.#generation) this.#arm(generation)
        })
        .catch(() => {
          if (generation === this.#generation) this.#lost()
        })
        .finally(() => clearTimeout(late))
    }, this.heartbeat)
  }

  /** The connection is gone or unfit: take another and LISTEN again. */
  #lost(): void {
    if (this.#closed) return
    this.#generation++
    if (this.#timer !== undefined) clearTimeout(this.#timer)
    this.#timer = undefined
    const db = this.#db
    this.#db = null
    if (db !== null) this.#drop(db)
    this.#connect(false).catch(() => {})
  }

  /** Lets go of a listening connection; it is closed, not pooled. */
  #drop(db: Handler): void {
    if (db._handler >= 0) detach(db._core, db._handler, this.#subscription)
    this.#subscription = 0
    db._discard()
  }

  #shutdown(): void {
    this.#closed = true
    this.#generation++
    if (this.#timer !== undefined) clearTimeout(this.#timer)
    this.#timer = undefined
    const db = this.#db
    this.#db = null
    if (db !== null) this.#drop(db)
    this.onEmpty()
  }
}

const hubs = new WeakMap<Pool, Map<string, Hub>>()

/** See `Pool.listen` (lib/pool.ts) and `pgdbpool/pg`'s `pool.listen`. */
export async function startListener(
  pool: Pool,
  channel: string,
  onNotify: (payload: string, notification: Notification) => void,
  options: ListenOptions = {},
): Promise<Listener> {
  if (typeof channel !== 'string' || channel.length === 0) throw new TypeError('listen: channel must be a non-empty string')
  if (typeof onNotify !== 'function') throw new TypeError('listen: onNotify must be a function')
  const group = options.group ?? 'default'
  const heartbeat = options.heartbeat ?? 10_000
  if (!Number.isInteger(heartbeat) || heartbeat < 100) throw new TypeError('listen: heartbeat must be an integer >= 100 (ms)')
  pool.context(group) // throws for an unknown group or a closed pool
  let byGroup = hubs.get(pool)
  if (byGroup === undefined) {
    byGroup = new Map()
    hubs.set(pool, byGroup)
  }
  const groups = byGroup
  let hub = groups.get(group)
  if (hub === undefined) {
    const created: Hub = new Hub(pool, group, heartbeat, () => {
      if (groups.get(group) === created) groups.delete(group)
    })
    hub = created
    groups.set(group, created)
  }
  const entry: Entry = { onNotify, onListen: options.onListen, listened: false }
  const owner = hub
  await owner.add(channel, entry)
  let closed = false
  return {
    channel,
    close: async () => {
      if (closed) return
      closed = true
      await owner.remove(channel, entry)
    },
  }
}
