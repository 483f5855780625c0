// The events a `Pool` emits (`pool.on(name, listener)`), with their payloads.

/**
 * A lifecycle event from the core, emitted under its `type`: `connect`, `disconnect` (with the
 * reason), `ban`, `unban`, `role_change`, `error`.
 */
export interface PoolEvent {
  type: 'connect' | 'disconnect' | 'ban' | 'unban' | 'role_change' | 'error'
  /** Milliseconds since the epoch. */
  at: number
  group: string | null
  endpoint: string | null
  reason: string | null
}

/** Payload of the `acquire` and `release` events: a handler took or gave back its connection. */
export interface HandlerEvent {
  group: string
}

/** Payload of the `leak` event: a handler held longer than its group's `leak_threshold`. */
export interface LeakEvent {
  group: string
  heldMs: number
  /** Where the handler took its connection. */
  stack: string
}

/** Every event of a `Pool`, with its listener's arguments. */
export interface PoolEvents {
  /** A connection was opened. */
  connect: [event: PoolEvent]
  /** A connection was closed; `reason` says why. */
  disconnect: [event: PoolEvent]
  /** An endpoint was banned after a failure; `reason` is the failure. */
  ban: [event: PoolEvent]
  /** A banned endpoint answered again. */
  unban: [event: PoolEvent]
  /** An endpoint's server role changed; `reason` is the new role. */
  role_change: [event: PoolEvent]
  /** A connect or a connection failed; `reason` is the error text. Never emitted without a listener. */
  error: [event: PoolEvent]
  /** A handler took a connection. */
  acquire: [event: HandlerEvent]
  /** A handler gave its connection back. */
  release: [event: HandlerEvent]
  /** A handler has held its connection longer than `leak_threshold`. */
  leak: [event: LeakEvent]
}
