'use strict'
// A TCP fault proxy between a client and a server: pass, delay, black-hole, reset or
// refuse connections, switchable at any time, and a server that accepts and never answers.

const net = require('node:net')
const { waitFor } = require('./pg')

const HOST = '127.0.0.1'

/**
 * One direction of a proxied connection. Everything (bytes, end, close) is queued in order
 * with its arrival time, so a delay applies to what is already in flight and a black hole only
 * holds things back: like a partitioned TCP path, it delivers them once the network heals.
 */
class Pipe {
  constructor(proxy, dst) {
    this.proxy = proxy
    this.dst = dst // a socket, or a function that creates the socket on first delivery
    this.queue = []
    this.timer = null
  }
  push(item) {
    this.queue.push({ at: Date.now(), item })
    this.pump()
  }
  pump() {
    if (this.timer) {
      clearTimeout(this.timer)
      this.timer = null
    }
    if (this.proxy.holding) return
    const delay = this.proxy.delayMs
    while (this.queue.length) {
      const wait = this.queue[0].at + delay - Date.now()
      if (wait > 0) {
        this.timer = setTimeout(() => this.pump(), wait)
        return
      }
      this.deliver(this.queue.shift().item)
    }
  }
  deliver(item) {
    if (typeof this.dst === 'function') {
      // Never connected: an end or close has nothing to act on.
      if (!Buffer.isBuffer(item)) return
      this.dst = this.dst()
    }
    const dst = this.dst
    if (dst.destroyed) return
    if (item === 'end') dst.end()
    // The other side closed: after what is already written, unless it was torn down by an error.
    else if (item === 'close') dst.destroySoon()
    else if (item === 'reset') rst(dst)
    else dst.write(item)
  }
  clear() {
    if (this.timer) clearTimeout(this.timer)
    this.timer = null
    this.queue = []
  }
}

function rst(socket) {
  if (socket && typeof socket !== 'function' && !socket.destroyed) {
    try {
      socket.resetAndDestroy()
    } catch {
      socket.destroy()
    }
  }
}

class Proxy {
  constructor(targetPort, targetHost) {
    this.target = targetPort
    this.targetHost = targetHost
    this.port = 0
    this.mode = 'pass'
    this.delayMs = 0
    this.holding = false
    this.resetting = false
    this.accepted = 0
    this.conns = new Set()
    this.server = null
  }

  /** Connections currently open through the proxy. */
  get active() {
    return this.conns.size
  }

  /** Host and port only: spread it over a server's endpoint to reach that server through here. */
  get endpoint() {
    return { host: HOST, port: this.port }
  }

  listen() {
    const server = net.createServer((client) => this.accept(client))
    server.on('error', () => {})
    return new Promise((resolve, reject) => {
      server.once('error', reject)
      server.listen(this.port, HOST, () => {
        server.off('error', reject)
        this.server = server
        this.port = server.address().port
        resolve()
      })
    })
  }

  accept(client) {
    this.accepted++
    client.on('error', () => {})
    if (this.resetting) return rst(client)
    const connectUpstream = () => {
      const upstream = net.connect(this.target, this.targetHost)
      upstream.setNoDelay(true)
      upstream.on('error', () => {})
      upstream.on('data', (b) => conn.down.push(b))
      upstream.on('end', () => conn.down.push('end'))
      upstream.on('close', (hadError) => {
        conn.upstreamClosed = true
        conn.down.push(hadError ? 'reset' : 'close')
        this.forget(conn)
      })
      conn.upstream = upstream
      return upstream
    }
    const conn = { client, upstream: null, clientClosed: false, upstreamClosed: false }
    // Not while black-holed: the server must not see a connection the network never let through.
    conn.up = new Pipe(this, this.holding ? connectUpstream : connectUpstream())
    conn.down = new Pipe(this, client)
    client.setNoDelay(true)
    client.on('data', (b) => conn.up.push(b))
    client.on('end', () => conn.up.push('end'))
    client.on('close', (hadError) => {
      conn.clientClosed = true
      conn.up.push(hadError ? 'reset' : 'close')
      this.forget(conn)
    })
    this.conns.add(conn)
  }

  // A connection stays tracked while either side is open: a held close must still be delivered.
  forget(conn) {
    if (!conn.clientClosed || (conn.upstream && !conn.upstreamClosed)) return
    conn.up.clear()
    conn.down.clear()
    this.conns.delete(conn)
  }

  setMode(mode, { delayMs = 0, holding = false, resetting = false } = {}) {
    this.mode = mode
    this.delayMs = delayMs
    this.holding = holding
    this.resetting = resetting
    for (const c of this.conns) {
      c.up.pump()
      c.down.pump()
    }
  }

  /** Forwards everything at once; reopens the listener after refuse(). */
  async pass() {
    this.setMode('pass')
    if (!this.server) await this.reopen()
  }

  /** Delays each chunk, both ways, by `ms` after it arrived (new and existing connections). */
  async delay(ms) {
    this.setMode('delay', { delayMs: ms })
    if (!this.server) await this.reopen()
  }

  /** Accepts and reads, forwards nothing either way (existing connections too) until healed. */
  async blackhole() {
    this.setMode('blackhole', { holding: true })
    if (!this.server) await this.reopen()
  }

  /**
   * Destroys every current connection with a TCP RST, on both sides. With `keep`, also resets
   * each new connection as soon as it is accepted, until pass().
   */
  async reset({ keep = false } = {}) {
    for (const c of this.conns) {
      c.up.clear()
      c.down.clear()
      rst(c.client)
      rst(c.upstream)
    }
    this.conns.clear()
    if (keep) {
      this.setMode('reset', { resetting: true })
      if (!this.server) await this.reopen()
    }
  }

  /** Closes the listener, so new connects are refused; open connections carry on as they were. */
  refuse() {
    this.mode = 'refuse'
    this.holding = false
    this.resetting = false
    this.delayMs = 0
    const server = this.server
    this.server = null
    // close() stops listening at once; its callback would wait for every accepted connection.
    if (server) server.close()
    for (const c of this.conns) {
      c.up.pump()
      c.down.pump()
    }
  }

  async reopen() {
    // The old listener's port can take a moment to become bindable again.
    await waitFor(() => this.listen().then(() => true), { ms: 5000, every: 20, what: `proxy to listen on ${this.port} again` })
  }

  /** New connections go to `port` (and `host`); open ones keep their server. */
  retarget(port, host = this.targetHost) {
    this.target = port
    this.targetHost = host
  }

  async close() {
    this.refuse()
    for (const c of this.conns) {
      c.up.clear()
      c.down.clear()
      c.client.destroy()
      if (c.upstream) c.upstream.destroy()
    }
    this.conns.clear()
  }
}

/** Starts a proxy to `targetPort` on a free 127.0.0.1 port, in `pass` mode. */
async function startProxy(targetPort, { targetHost = HOST } = {}) {
  const proxy = new Proxy(targetPort, targetHost)
  await proxy.listen()
  return proxy
}

/** A server that accepts connections and reads, but never sends a byte (connect timeouts). */
async function startSilentServer() {
  const sockets = new Set()
  const server = net.createServer((s) => {
    silent.accepted++
    sockets.add(s)
    s.on('error', () => {})
    s.on('data', () => {})
    s.on('close', () => sockets.delete(s))
  })
  server.on('error', () => {})
  const silent = {
    accepted: 0,
    port: 0,
    get active() {
      return sockets.size
    },
    get endpoint() {
      return { host: HOST, port: silent.port }
    },
    close() {
      for (const s of sockets) s.destroy()
      return new Promise((resolve) => server.close(() => resolve()))
    },
  }
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, HOST, () => {
      server.off('error', reject)
      silent.port = server.address().port
      resolve()
    })
  })
  return silent
}

module.exports = { startProxy, startSilentServer }
