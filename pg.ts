/**
 * `pgdbpool/pg`: a drop-in for node-postgres (`pg`) — Pool, Client, types, defaults,
 * DatabaseError, escapeIdentifier, escapeLiteral and a Cursor — running on pgdbpool's core.
 */
export * from './lib/pg/index'
