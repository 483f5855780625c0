// Asynchronous messages of sessions held by pg clients and listeners (notifications, notices,
// the end of the connection), delivered by the core as completions of id 0, status 3.

import type { Core } from '../native'

/** Receives one message: type `A` (notification), `N` (notice) or `X` (the connection ended). */
export type Sink = (kind: number, body: Buffer) => void

const sinks = new WeakMap<Core, Map<number, Sink>>()
let nextSubscription = 1

function sinksOf(core: Core): Map<number, Sink> {
  let map = sinks.get(core)
  if (map === undefined) {
    const own = new Map<number, Sink>()
    map = own
    sinks.set(core, own)
    core.onAsync = (message: Buffer) => {
      const sink = own.get(message.readUInt32BE(0))
      if (sink === undefined) return
      try {
        sink(message[4], message.subarray(5))
      } catch (e) {
        process.emitWarning(`a pgdbpool/pg notification listener threw: ${(e as Error)?.stack ?? e}`, 'PgDbPoolListenerWarning')
      }
    }
  }
  return map
}

export const MESSAGE_NOTIFICATION = 0x41 // 'A'
export const MESSAGE_NOTICE = 0x4e // 'N'
export const MESSAGE_END = 0x58 // 'X'

/** Remembers the session `handler` holds (right after its checkout); returns its backend pid. */
export function attach(core: Core, handler: number): number {
  return core.native.pgAttach(handler)
}

/** Starts delivering `handler`'s asynchronous messages to `sink`; returns the subscription (0: none). */
export function subscribe(core: Core, handler: number, sink: Sink): number {
  const map = sinksOf(core)
  const id = nextSubscription
  nextSubscription = nextSubscription >= 0xfffffff0 ? 1 : nextSubscription + 1
  map.set(id, sink)
  if (!core.native.pgSubscribe(handler, id, true)) {
    map.delete(id)
    return 0
  }
  return id
}

/** Forgets `handler`'s session (at release), ending its subscription if it has one. */
export function detach(core: Core, handler: number, subscription: number): void {
  if (subscription !== 0) sinks.get(core)?.delete(subscription)
  core.native.pgDetach(handler)
}

function cstring(body: Buffer, pos: number): [string, number] {
  const end = body.indexOf(0, pos)
  const stop = end < 0 ? body.length : end
  return [body.toString('utf8', pos, stop), stop + 1]
}

/** A NotificationResponse as pg's `notification` event has it. */
export interface Notification {
  name: 'notification'
  length: number
  processId: number
  channel: string
  payload: string
}

export function parseNotification(body: Buffer): Notification {
  const processId = body.readInt32BE(0)
  const [channel, next] = cstring(body, 4)
  const [payload] = cstring(body, next)
  return { name: 'notification', length: body.length + 4, processId, channel, payload }
}

const NOTICE_FIELDS: Record<string, string> = {
  S: 'severity',
  C: 'code',
  M: 'message',
  D: 'detail',
  H: 'hint',
  P: 'position',
  p: 'internalPosition',
  q: 'internalQuery',
  W: 'where',
  s: 'schema',
  t: 'table',
  c: 'column',
  d: 'dataType',
  n: 'constraint',
  F: 'file',
  L: 'line',
  R: 'routine',
}

/** A NoticeResponse as pg's `notice` event has it. */
export function parseNotice(body: Buffer): Record<string, unknown> {
  const notice: Record<string, unknown> = { name: 'notice', length: body.length + 4 }
  let pos = 0
  while (pos < body.length && body[pos] !== 0) {
    const key = String.fromCharCode(body[pos])
    const [value, next] = cstring(body, pos + 1)
    pos = next
    const name = NOTICE_FIELDS[key]
    if (name !== undefined) notice[name] = value
  }
  return notice
}
