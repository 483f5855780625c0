'use strict'
// TLS against real embedded PostgreSQL servers with ssl=on and throw-away certificates:
// every ssl mode, CA checks, host-name checks, client certificates, and no password in errors.
const test = require('ava')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { inspect } = require('node:util')

const { Pool, DBOfflineError, DBConnectionError, ConfigError } = require('..')
const { startServer, guardProcess, PASSWORD } = require('./helpers/pg')
const { makeCa, makeLeaf, installServerCert } = require('./helpers/certs')

guardProcess(test)

let dir
let ca // signs the servers' certificates and the client certificate
let otherCa // unrelated
let clientCert
let plain // ssl off
let tls // ssl on, certificate for localhost + 127.0.0.1; client certificates checked against `ca`
let badName // ssl on, certificate signed by `ca` for another name

const SCRAM_PASSWORD = 'scram-pw-91c4e'
const SSL_SQL = 'SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()'

test.before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgdbpool-tls-'))
  ca = makeCa(dir, 'pgdbpool-test-ca')
  otherCa = makeCa(dir, 'unrelated-ca')
  const good = makeLeaf(dir, 'server', ca, { cn: 'localhost', san: ['DNS:localhost', 'IP:127.0.0.1'] })
  const wrong = makeLeaf(dir, 'wrong-name', ca, { cn: 'db.example.invalid', san: ['DNS:db.example.invalid', 'IP:192.0.2.1'] })
  clientCert = makeLeaf(dir, 'client', ca, { cn: 'certuser', usage: 'clientAuth' })
  ;[plain, tls, badName] = await Promise.all([
    startServer({ embedded: true }),
    startServer({
      embedded: true,
      flags: ['-c', 'ssl=on', '-c', 'ssl_ca_file=root.crt'],
      prepare: (data) => {
        installServerCert(data, good, ca)
        // certuser logs in with a client certificate (CN=certuser) and no password; scramuser
        // with SCRAM (the other roles use the harness's plain password method).
        const hba = path.join(data, 'pg_hba.conf')
        const rules = ['hostssl all certuser 127.0.0.1/32 cert', 'hostssl all certuser ::1/128 cert', 'host all scramuser 127.0.0.1/32 scram-sha-256']
        fs.writeFileSync(hba, rules.join('\n') + '\n' + fs.readFileSync(hba, 'utf8'))
      },
    }),
    startServer({ embedded: true, flags: ['-c', 'ssl=on'], prepare: (data) => installServerCert(data, wrong) }),
  ])
  await tls.sql('CREATE ROLE certuser LOGIN')
  await tls.sql(`SET password_encryption = 'scram-sha-256'; CREATE ROLE scramuser LOGIN PASSWORD '${SCRAM_PASSWORD}'`)
})

test.after.always(async () => {
  await Promise.all([plain, tls, badName].filter(Boolean).map((s) => s.destroy()))
  if (dir) fs.rmSync(dir, { recursive: true, force: true })
})

/** A private pool on `server`, closed when the test ends. */
function makePool(t, server, extra) {
  const db = typeof server === 'string' ? server : { ...server.endpoint, connect_timeout: 5, ...extra }
  const pool = new Pool({ type: 'non-threaded', db, groups: { default: { connection_count: 1, acquire_timeout: 3000 } } })
  t.teardown(() => pool.close({ timeout: 1000 }).catch(() => {}))
  return pool
}

/** Connects and returns this session's row of pg_stat_ssl. */
async function session(t, server, extra) {
  const pool = makePool(t, server, extra)
  await pool.ready
  const r = await pool.query(SSL_SQL)
  return r.rows[0]
}

/** Every error text a user could see or log. */
function errorTexts(err) {
  return [err.message, err.stack, inspect(err, { depth: 10, showHidden: true }), JSON.stringify(err.causes ?? [])]
}

/** Expects the connection to fail: both `ready` and a query reject, naming `pattern`. */
async function refused(t, server, extra, pattern) {
  const pool = makePool(t, server, extra)
  const err = await t.throwsAsync(pool.ready, { instanceOf: DBOfflineError })
  t.regex(err.message, pattern)
  t.is(err.causes.length, 1)
  t.regex(err.causes[0], pattern)
  const queryErr = await t.throwsAsync(pool.query('SELECT 1'))
  t.true(queryErr instanceof DBOfflineError || queryErr instanceof DBConnectionError, String(queryErr))
  t.regex(queryErr.message, pattern)
  for (const e of [err, queryErr]) {
    for (const text of errorTexts(e)) t.false(text.includes(PASSWORD), 'password in error text')
  }
  t.false(inspect(pool, { depth: 10, showHidden: true }).includes(PASSWORD))
  t.false(JSON.stringify(pool.stats()).includes(PASSWORD))
  return err
}

const UNKNOWN_CA = /server certificate rejected \(ssl=verify-(full|ca)\).*UnknownIssuer.*not signed by a CA in ssl_ca/

test('require: the session is encrypted (no certificate check)', async (t) => {
  const row = await session(t, tls, { ssl: 'require' })
  t.true(row.ssl)
  t.regex(row.version, /^TLSv1\.[23]$/)
  // Without ssl_ca, require accepts any certificate, even one for another name by an unknown CA.
  t.true((await session(t, badName, { ssl: 'require' })).ssl)
})

test('verify-full with the right CA connects to 127.0.0.1 and to localhost', async (t) => {
  t.true((await session(t, tls, { ssl: 'verify-full', ssl_ca: ca.cert })).ssl)
  t.true((await session(t, tls, { ssl: 'verify-full', ssl_ca: ca.cert, host: 'localhost' })).ssl)
  // The CA as PEM text instead of a file path, and in URL form (sslrootcert).
  t.true((await session(t, tls, { ssl: 'verify-full', ssl_ca: fs.readFileSync(ca.cert, 'utf8') })).ssl)
  const pool = makePool(t, `postgres://postgres:${PASSWORD}@localhost:${tls.port}/postgres?sslmode=verify-full&sslrootcert=${encodeURIComponent(ca.cert)}`)
  t.true((await pool.query(SSL_SQL)).rows[0].ssl)
  t.false(inspect(pool, { depth: 10, showHidden: true }).includes(PASSWORD))
})

test('verify-full fails with an unrelated CA', async (t) => {
  await refused(t, tls, { ssl: 'verify-full', ssl_ca: otherCa.cert }, UNKNOWN_CA)
})

test('verify-full fails when the certificate does not name the host', async (t) => {
  const err = await refused(
    t,
    badName,
    { ssl: 'verify-full', ssl_ca: ca.cert },
    /server certificate rejected \(ssl=verify-full\).*not valid for name "127\.0\.0\.1"/,
  )
  t.regex(err.message, /db\.example\.invalid/)
  t.regex(err.message, /use ssl=verify-ca to skip the host name check/)
  await refused(t, badName, { ssl: 'verify-full', ssl_ca: ca.cert, host: 'localhost' }, /not valid for name "localhost"/)
})

test('verify-ca with the right CA ignores the host name; fails with an unrelated CA', async (t) => {
  t.true((await session(t, badName, { ssl: 'verify-ca', ssl_ca: ca.cert })).ssl)
  t.true((await session(t, tls, { ssl: 'verify-ca', ssl_ca: ca.cert })).ssl)
  await refused(t, badName, { ssl: 'verify-ca', ssl_ca: otherCa.cert }, UNKNOWN_CA)
  await refused(t, tls, { ssl: 'verify-ca', ssl_ca: otherCa.cert }, UNKNOWN_CA)
})

test('verify-full without ssl_ca trusts the public roots (libpq sslrootcert=system), so a private CA is rejected; verify-ca without ssl_ca is refused, as in libpq', async (t) => {
  const publicRoots = /server certificate rejected.*UnknownIssuer.*not signed by a public CA; set ssl_ca/
  await refused(t, tls, { ssl: 'verify-full' }, publicRoots)
  await refused(t, tls, { ssl_ca: 'system' }, publicRoots)
  const err = t.throws(() => makePool(t, tls, { ssl: 'verify-ca' }), { instanceOf: ConfigError })
  t.is(err.path, 'db.ssl_ca')
})

test('require with ssl_ca checks the chain like verify-ca (as libpq does)', async (t) => {
  t.true((await session(t, badName, { ssl: 'require', ssl_ca: ca.cert })).ssl)
  await refused(t, tls, { ssl: 'require', ssl_ca: otherCa.cert }, /server certificate rejected \(ssl=require\).*UnknownIssuer/)
})

test('prefer uses TLS when offered and falls back to plaintext otherwise', async (t) => {
  t.true((await session(t, tls, { ssl: 'prefer' })).ssl)
  t.false((await session(t, plain, { ssl: 'prefer' })).ssl)
})

test('require and verify-* fail clearly against a server without TLS', async (t) => {
  await refused(t, plain, { ssl: 'require' }, /server does not support TLS/)
  await refused(t, plain, { ssl: 'verify-full', ssl_ca: ca.cert }, /server does not support TLS/)
})

test('disable gives an unencrypted session, also on a server with TLS', async (t) => {
  t.false((await session(t, tls, { ssl: 'disable' })).ssl)
  t.false((await session(t, tls, {})).ssl) // the default
})

test('client certificate: ssl_cert / ssl_key log in with cert authentication', async (t) => {
  const pool = makePool(t, tls, { user: 'certuser', pass: undefined, ssl: 'verify-full', ssl_ca: ca.cert, ssl_cert: clientCert.cert, ssl_key: clientCert.key })
  const r = await pool.query('SELECT current_user AS who, s.ssl, s.client_dn FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()')
  t.deepEqual(r.rows[0], { who: 'certuser', ssl: true, client_dn: '/CN=certuser' })
  // PEM text works as well as file paths, and the key never shows up in inspect output.
  const keyPem = fs.readFileSync(clientCert.key, 'utf8')
  const inline = makePool(t, tls, { user: 'certuser', pass: undefined, ssl: 'require', ssl_cert: fs.readFileSync(clientCert.cert, 'utf8'), ssl_key: keyPem })
  t.is((await inline.query('SELECT current_user AS who')).rows[0].who, 'certuser')
  const keyBody = keyPem.split('\n')[1]
  t.false(inspect(inline, { depth: 10, showHidden: true }).includes(keyBody))
  // Without a client certificate the server refuses certuser.
  await refused(t, tls, { user: 'certuser', pass: undefined, ssl: 'require' }, /certificate/)
})

test('channel_binding: SCRAM is bound to the TLS session', async (t) => {
  const scram = { user: 'scramuser', pass: SCRAM_PASSWORD }
  // require only succeeds when the client sends tls-server-end-point binding data and the
  // server accepts it (SCRAM-SHA-256-PLUS), i.e. both sides hashed the same certificate.
  t.true((await session(t, tls, { ...scram, ssl: 'require', channel_binding: 'require' })).ssl)
  t.true((await session(t, tls, { ...scram, ssl: 'verify-full', ssl_ca: ca.cert, channel_binding: 'require' })).ssl)
  t.true((await session(t, tls, { ...scram, ssl: 'require', channel_binding: 'disable' })).ssl)
  // Without TLS there is nothing to bind to.
  const err = await refused(t, tls, { ...scram, ssl: 'disable', channel_binding: 'require' }, /channel binding/)
  for (const text of errorTexts(err)) t.false(text.includes(SCRAM_PASSWORD))
})

test('TLS settings are validated with key paths, without echoing secrets', (t) => {
  const base = { ...tls.endpoint, ssl: 'verify-full' }
  const make = (db) => new Pool({ type: 'non-threaded', db, groups: { default: { connection_count: 1 } } })
  const cases = [
    [{ ...base, ssl: 'verify-everything' }, 'db.ssl', /must be one of/],
    [{ ...base, channel_binding: 'always' }, 'db.channel_binding', /must be one of 'disable', 'prefer', 'require'/],
    [{ ...base, ssl_ca: path.join(dir, 'missing.crt') }, 'db.ssl_ca', /cannot read CA file .*missing\.crt/],
    [{ ...base, ssl_ca: '-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n' }, 'db.ssl_ca', /certificate 1 is not valid/],
    [{ ...base, ssl_ca: clientCert.key }, 'db.ssl_ca', /holds no PEM certificate/],
    [{ ...base, ssl_cert: clientCert.cert }, 'db.ssl_key', /is required/],
    [{ ...base, ssl_key: clientCert.key }, 'db.ssl_cert', /is required/],
    [{ ...base, ssl_cert: clientCert.cert, ssl_key: clientCert.cert }, 'db.ssl_key', /holds no PEM private key/],
    [{ ...base, ssl_cert: clientCert.cert, ssl_key: 'MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg' }, 'db.ssl_key', /cannot read key file \(ENOENT\)$/],
    [`postgres://postgres:${PASSWORD}@127.0.0.1:${tls.port}/postgres?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem`, 'db.ssl_ca', /cannot read CA file/],
    [`postgres://postgres:${PASSWORD}@127.0.0.1:${tls.port}/postgres?sslmode=bogus`, 'db.ssl', /must be one of/],
  ]
  for (const [db, keyPath, pattern] of cases) {
    const err = t.throws(() => make(db), { instanceOf: ConfigError })
    t.is(err.path, keyPath, err.message)
    t.regex(err.message, pattern)
    for (const text of errorTexts(err)) {
      t.false(text.includes(PASSWORD), 'password in error text')
      t.false(text.includes('MIGHAgEAMBMGByqGSM49'), 'key material in error text')
    }
  }
})

test('a cancel request of a TLS session goes over TLS, to the address the session reached', async (t) => {
  // A relay in front of the TLS server records how each connection starts: an SSLRequest
  // (80877103) or a plain CancelRequest (80877102), which would carry the session's key in clear.
  const net = require('node:net')
  const openings = []
  const relay = net.createServer((client) => {
    let first = true
    const upstream = net.connect(tls.port, '127.0.0.1')
    client.on('data', (chunk) => {
      if (first && chunk.length >= 8) openings.push(chunk.readUInt32BE(4))
      first = false
      upstream.write(chunk)
    })
    upstream.on('data', (chunk) => client.write(chunk))
    const end = () => {
      client.destroy()
      upstream.destroy()
    }
    client.on('error', end).on('close', end)
    upstream.on('error', end).on('close', end)
  })
  await new Promise((resolve) => relay.listen(0, '127.0.0.1', resolve))
  t.teardown(() => relay.close())
  // No statement_timeout: only the cancel request can end the sleep.
  const pool = makePool(t, tls, { port: relay.address().port, ssl: 'require', query_timeout: 0 })
  const db = pool.handler()
  t.true((await db.query(SSL_SQL)).rows[0].ssl)
  const controller = new AbortController()
  const sleeping = db.query('SELECT pg_sleep(30)', [], { signal: controller.signal })
  // Abort once the statement runs on the server, so that the cancel request is what ends it.
  const { waitFor } = require('./helpers/pg')
  await waitFor(async () => (await tls.sql("SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'")).rows[0].n === 1, {
    ms: 10000,
    what: 'the sleep to run',
  })
  const before = openings.length
  controller.abort()
  await t.throwsAsync(sleeping, { name: 'AbortError' })
  await waitFor(
    async () => (await tls.sql("SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'")).rows[0].n === 0,
    {
      ms: 10000,
      what: 'the server to cancel the sleep',
    },
  )
  await waitFor(() => openings.length > before, { ms: 5000, what: 'the cancel connection' })
  const cancels = openings.slice(before)
  t.deepEqual(
    cancels,
    cancels.map(() => 80877103),
    `every cancel connection started with an SSLRequest: ${cancels}`,
  )
  t.false(openings.includes(80877102), 'no CancelRequest went in plain text')
  await db.release()
})
