// ESM entry of `pgdbpool/pg`: the CommonJS module's exports, by name and as the default export
// (`import pg from 'pgdbpool/pg'`, like `import pg from 'pg'`).
import pg from './pg.js'

export const { Pool, Client, Cursor, Result, DatabaseError, escapeIdentifier, escapeLiteral, defaults, types, TypeOverrides, native } = pg
export default pg
