'use strict'
// pgdbpool/pg's types where the ORMs expect node-postgres's: helpers/pg-typecheck/check.ts
// passes `tsc --noEmit` with Drizzle's, Kysely's, Prisma's and @types/pg's declarations.
const test = require('ava')
const path = require('node:path')
const { execFile } = require('node:child_process')

test('drizzle({ client }), PostgresDialect({ pool, cursor }), new PrismaPg(pool) and pg.Pool accept pgdbpool/pg types', async (t) => {
  const tsc = require.resolve('typescript/bin/tsc')
  const project = path.join(__dirname, 'helpers', 'pg-typecheck', 'tsconfig.json')
  const out = await new Promise((resolve) => {
    execFile(process.execPath, [tsc, '-p', project], { timeout: 100_000 }, (error, stdout, stderr) =>
      resolve({ code: error ? (error.code ?? 1) : 0, text: `${stdout}${stderr}` }),
    )
  })
  t.is(out.code, 0, out.text)
})
