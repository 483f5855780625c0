'use strict'
// A hostile PostgreSQL server: it speaks enough of the wire protocol (trust login, simple and
// extended queries, pipelining) to serve results whose column types and binary values the test
// chooses byte for byte — truncated values, array dimensions that lie, runaway nesting, random
// bytes. Real PostgreSQL never sends those; a compromised server, a buggy proxy or a bit flip on
// a path without TLS can.
//
// A query whose text contains `scenario:<name>` gets `scenarios[name]`: { columns: [{ name,
// oid }], rows: [[Buffer | null, ...] | raw DataRow Buffer] } (or a function returning it), else
// `scenarios['*'](name)`; any other query gets an empty result.

const net = require('node:net')

function msg(type, body) {
  const out = Buffer.alloc(5 + body.length)
  out.write(type, 0, 'latin1')
  out.writeInt32BE(4 + body.length, 1)
  body.copy(out, 5)
  return out
}

const cstr = (s) => Buffer.concat([Buffer.from(s, 'utf8'), Buffer.from([0])])
const i16 = (v) => {
  const b = Buffer.alloc(2)
  b.writeInt16BE(v)
  return b
}
const i32 = (v) => {
  const b = Buffer.alloc(4)
  b.writeInt32BE(v)
  return b
}

function rowDescription(columns) {
  return msg(
    'T',
    Buffer.concat([i16(columns.length), ...columns.map((c) => Buffer.concat([cstr(c.name), i32(0), i16(0), i32(c.oid), i16(-1), i32(-1), i16(1)]))]),
  )
}

function dataRow(cells) {
  return msg('D', Buffer.concat([i16(cells.length), ...cells.map((c) => (c === null ? i32(-1) : Buffer.concat([i32(c.length), c])))]))
}

const READY = msg('Z', Buffer.from('I'))

class FakePg {
  constructor(scenarios) {
    this.scenarios = scenarios
    this.sockets = new Set()
    this.server = net.createServer((socket) => this.#serve(socket))
  }

  listen() {
    return new Promise((resolve) => this.server.listen(0, '127.0.0.1', () => resolve(this.server.address().port)))
  }

  get endpoint() {
    return { host: '127.0.0.1', port: this.server.address().port, name: 'fake', user: 'fake', pass: 'fake-pw' }
  }

  close() {
    for (const s of this.sockets) s.destroy()
    return new Promise((resolve) => this.server.close(() => resolve()))
  }

  #result(sql) {
    const m = /scenario:([\w-]+)/.exec(sql)
    if (!m) return { columns: [], rows: [] }
    const s = this.scenarios[m[1]]
    if (s) return typeof s === 'function' ? s() : s
    // `*` makes results for any other name (deterministically from it, as it is asked twice:
    // at Describe and at Execute).
    if (this.scenarios['*']) return this.scenarios['*'](m[1])
    throw new Error(`fake server: no scenario ${m[1]}`)
  }

  #serve(socket) {
    this.sockets.add(socket)
    socket.on('close', () => this.sockets.delete(socket))
    socket.on('error', () => {})
    let buf = Buffer.alloc(0)
    let started = false
    const statements = new Map()
    const portals = new Map()
    let failed = false // skip to Sync after an error, as the server does
    socket.on('data', (d) => {
      buf = Buffer.concat([buf, d])
      const out = []
      for (;;) {
        if (!started) {
          if (buf.length < 8) break
          const len = buf.readInt32BE(0)
          if (buf.length < len) break
          const code = buf.readInt32BE(4)
          buf = buf.subarray(len)
          if (code === 80877103 || code === 80877104) {
            out.push(Buffer.from('N'))
            continue
          }
          if (code === 80877102) {
            socket.end()
            return
          }
          started = true
          out.push(msg('R', i32(0)))
          for (const [k, v] of [
            ['server_version', '16.0'],
            ['server_encoding', 'UTF8'],
            ['client_encoding', 'UTF8'],
            ['DateStyle', 'ISO, MDY'],
            ['integer_datetimes', 'on'],
            ['standard_conforming_strings', 'on'],
            ['TimeZone', 'UTC'],
            ['in_hot_standby', 'off'],
            ['default_transaction_read_only', 'off'],
          ]) {
            out.push(msg('S', Buffer.concat([cstr(k), cstr(v)])))
          }
          out.push(msg('K', Buffer.concat([i32(1234), i32(5678)])))
          out.push(READY)
          continue
        }
        if (buf.length < 5) break
        const type = String.fromCharCode(buf[0])
        const len = buf.readInt32BE(1)
        if (buf.length < 1 + len) break
        const body = buf.subarray(5, 1 + len)
        buf = buf.subarray(1 + len)
        if (type === 'X') {
          socket.end()
          return
        }
        if (type === 'S') {
          failed = false
          out.push(READY)
          continue
        }
        if (failed) continue
        try {
          this.#message(type, body, statements, portals, out)
        } catch (e) {
          failed = true
          out.push(msg('E', Buffer.concat([cstr('SERROR'), cstr('C58000'), cstr(`Mfake server: ${e.message}`), Buffer.from([0])])))
        }
      }
      if (out.length) socket.write(Buffer.concat(out))
    })
  }

  #message(type, body, statements, portals, out) {
    const readCstr = (at) => {
      const end = body.indexOf(0, at)
      return [body.toString('utf8', at, end), end + 1]
    }
    switch (type) {
      case 'Q': {
        const [sql] = readCstr(0)
        if (sql.trim() === '') {
          out.push(msg('I', Buffer.alloc(0)))
        } else {
          out.push(msg('C', cstr(sql.trim().split(/\s+/)[0].toUpperCase())))
        }
        out.push(READY)
        return
      }
      case 'P': {
        const [name, at] = readCstr(0)
        const [sql] = readCstr(at)
        statements.set(name, sql)
        out.push(msg('1', Buffer.alloc(0)))
        return
      }
      case 'D': {
        const kind = String.fromCharCode(body[0])
        const [name] = readCstr(1)
        const sql = kind === 'S' ? statements.get(name) : portals.get(name)
        const { columns } = this.#result(sql ?? '')
        if (kind === 'S') out.push(msg('t', i16(0)))
        out.push(columns.length ? rowDescription(columns) : msg('n', Buffer.alloc(0)))
        return
      }
      case 'B': {
        const [portal, at] = readCstr(0)
        const [stmt] = readCstr(at)
        portals.set(portal, statements.get(stmt) ?? '')
        out.push(msg('2', Buffer.alloc(0)))
        return
      }
      case 'E': {
        const [portal] = readCstr(0)
        const { rows } = this.#result(portals.get(portal) ?? '')
        for (const row of rows) out.push(Buffer.isBuffer(row) ? row : dataRow(row))
        out.push(msg('C', cstr(`SELECT ${rows.length}`)))
        return
      }
      case 'C':
        out.push(msg('3', Buffer.alloc(0)))
        return
      case 'H':
        return
      default:
        throw new Error(`unexpected message ${type}`)
    }
  }
}

module.exports = { FakePg, msg, dataRow, i16, i32 }
