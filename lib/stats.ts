// What `pool.stats()` returns: gauges and counters per group and per endpoint.

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
