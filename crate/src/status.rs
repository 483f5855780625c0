//! What the server reports about a session, read off its byte stream.
//!
//! After every statement PostgreSQL says where the session stands: the status byte of
//! ReadyForQuery (`I` idle, `T` in a transaction, `E` in a failed transaction). libpq, pgJDBC,
//! psycopg, Npgsql and PgBouncer decide transactions from it; tokio-postgres reads it but does
//! not expose it. [`Watched`] sits between tokio-postgres and the socket (or the decrypted TLS
//! stream), follows the backend message framing without copying anything, and records that
//! byte, plus the changes of session state the server announces (ParameterStatus) and SQL-level
//! `PREPARE`s (their command tag), in a [`SessionStatus`] the pool reads.
//!
//! tokio-postgres reads a message from the stream before it hands it to the waiting statement,
//! so once a statement has its answer the status recorded here is the one the server sent with
//! that answer (for a session running one statement at a time). An error answer, though, is
//! handed over before its ReadyForQuery: [`SessionStatus::settled`] waits until every request
//! written (each simple Query and each Sync earns one ReadyForQuery) has had its answer.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use futures_util::task::AtomicWaker;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

use crate::role::Role;

/// Where the session's transaction stands, as the server last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxStatus {
    /// Not in a transaction.
    Idle,
    /// In a transaction.
    InTransaction,
    /// In a failed transaction: only ROLLBACK can end it.
    Failed,
}

/// What the server has told about one session; written by the connection task, read by the
/// pool.
#[derive(Debug)]
pub(crate) struct SessionStatus {
    status: AtomicU8,
    /// A ParameterStatus arrived after startup: a reported setting was changed.
    settings_changed: AtomicBool,
    /// The server reported a `client_encoding` other than UTF8.
    foreign_encoding: AtomicBool,
    /// The server's role as its reported `in_hot_standby` and `default_transaction_read_only`
    /// say (see `role`), as read off the stream; `ROLE_UNKNOWN` until it reports them.
    reported_role: AtomicU8,
    /// A statement completed with the `PREPARE` tag (an SQL-level prepared statement).
    prepared: AtomicBool,
    /// Requests written that earn a ReadyForQuery (the startup, each Query, each Sync).
    sent: AtomicU64,
    /// ReadyForQuery messages read.
    answered: AtomicU64,
    /// The stream ended or failed: no more answers will come.
    ended: AtomicBool,
    /// Woken on every ReadyForQuery and at the end of the stream.
    waiter: AtomicWaker,
    /// The backend pid, asynchronous messages and script answers, for `pgdbpool/pg`.
    pub(crate) pg: crate::pgcompat::SessionTap,
}

impl Default for SessionStatus {
    fn default() -> Self {
        Self {
            status: AtomicU8::new(b'I'),
            settings_changed: AtomicBool::new(false),
            foreign_encoding: AtomicBool::new(false),
            reported_role: AtomicU8::new(ROLE_UNKNOWN),
            prepared: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            waiter: AtomicWaker::new(),
            pg: crate::pgcompat::SessionTap::default(),
        }
    }
}

impl SessionStatus {
    /// The transaction status of the last ReadyForQuery.
    pub(crate) fn tx(&self) -> TxStatus {
        match self.status.load(Ordering::Acquire) {
            b'T' => TxStatus::InTransaction,
            b'E' => TxStatus::Failed,
            _ => TxStatus::Idle,
        }
    }

    /// The role the server reported last (`None` if it does not report it: before 14, or a
    /// pooler that does not pass the settings on). Current as soon as the bytes are read, so a
    /// connection task can compare it after every poll for the price of a load.
    pub(crate) fn reported_role(&self) -> Option<Role> {
        let bits = self.reported_role.load(Ordering::Acquire);
        let standby = match bits & ROLE_STANDBY_MASK {
            ROLE_STANDBY_ON => true,
            ROLE_STANDBY_OFF => false,
            _ => return None,
        };
        Some(Role::reported(standby, bits & ROLE_READ_ONLY != 0))
    }

    fn report_setting(&self, name: &[u8], value: &[u8]) {
        let on = value == b"on";
        let _ = self.reported_role.fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| match name {
            b"in_hot_standby" => Some((bits & !ROLE_STANDBY_MASK) | if on { ROLE_STANDBY_ON } else { ROLE_STANDBY_OFF }),
            b"default_transaction_read_only" => Some(if on { bits | ROLE_READ_ONLY } else { bits & !ROLE_READ_ONLY }),
            _ => None,
        });
    }

    /// Whether the server announced a changed setting since the last call.
    pub(crate) fn take_settings_changed(&self) -> bool {
        self.settings_changed.load(Ordering::Acquire) && self.settings_changed.swap(false, Ordering::AcqRel)
    }

    /// Whether the server last reported a `client_encoding` other than UTF8.
    pub(crate) fn foreign_encoding(&self) -> bool {
        self.foreign_encoding.load(Ordering::Acquire)
    }

    /// Waits until every request written so far has had its ReadyForQuery (or the stream has
    /// ended), so that [`SessionStatus::tx`] is the status after the last of them.
    pub(crate) async fn settled(&self) {
        let done = || self.ended.load(Ordering::Acquire) || self.answered.load(Ordering::Acquire) >= self.sent.load(Ordering::Acquire);
        if done() {
            return;
        }
        poll_fn(|cx| {
            self.waiter.register(cx.waker());
            if done() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    fn answer(&self) {
        self.answered.fetch_add(1, Ordering::AcqRel);
        self.waiter.wake();
    }

    fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.waiter.wake();
        self.pg.end();
    }

    /// Whether an SQL-level `PREPARE` ran since the last call.
    pub(crate) fn take_prepared(&self) -> bool {
        self.prepared.load(Ordering::Acquire) && self.prepared.swap(false, Ordering::AcqRel)
    }
}

/// Where the reader is in the backend message stream.
#[derive(Debug)]
enum Framing {
    /// The one-byte answer to SSLRequest comes first: `S` (TLS follows: the TLS stream is
    /// watched instead) or `N` (plain messages follow).
    SslAnswer,
    /// Collecting the 5-byte header (type, length) of the next message.
    Header { len: usize, buf: [u8; 5] },
    /// Inside a message body; `keep` holds the bodies we read (small ones only).
    Body { kind: u8, left: usize, keep: Option<Vec<u8>> },
    /// Not watching (the TLS layer above watches the decrypted stream).
    Off,
}

/// Bodies longer than this are skipped, never kept: ReadyForQuery has one byte, and the
/// ParameterStatus and CommandComplete messages we read are short.
const KEEP_LIMIT: usize = 1024;

/// `SessionStatus::reported_role`'s bits: `in_hot_standby` not reported, off, or on (the low two
/// bits), and `default_transaction_read_only` on.
const ROLE_UNKNOWN: u8 = 0;
const ROLE_STANDBY_OFF: u8 = 1;
const ROLE_STANDBY_ON: u8 = 2;
const ROLE_STANDBY_MASK: u8 = 0b11;
const ROLE_READ_ONLY: u8 = 0b100;

/// Follows backend messages and records what [`SessionStatus`] holds.
#[derive(Debug)]
struct Reader {
    framing: Framing,
    /// The first ReadyForQuery has been seen: ParameterStatus messages from now on are changes.
    started: bool,
    status: Arc<SessionStatus>,
}

impl Reader {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.framing {
                Framing::Off => return,
                Framing::SslAnswer => {
                    self.framing = if data[0] == b'S' { Framing::Off } else { Framing::Header { len: 0, buf: [0; 5] } };
                    data = &data[1..];
                }
                Framing::Header { len, buf } => {
                    let take = (5 - *len).min(data.len());
                    buf[*len..*len + take].copy_from_slice(&data[..take]);
                    *len += take;
                    data = &data[take..];
                    if *len == 5 {
                        let kind = buf[0];
                        let left = (u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize).saturating_sub(4);
                        let tap = &self.status.pg;
                        let wanted = (matches!(kind, b'Z' | b'S' | b'C') && left <= KEEP_LIMIT)
                            || kind == b'K'
                            || (matches!(kind, b'A' | b'N') && tap.subscribed())
                            || (matches!(kind, b'T' | b'D' | b'C' | b'I') && tap.capturing());
                        self.framing = Framing::Body { kind, left, keep: wanted.then(|| Vec::with_capacity(left)) };
                        if left == 0 {
                            self.finish();
                        }
                    }
                }
                Framing::Body { left, keep, .. } => {
                    let take = (*left).min(data.len());
                    if let Some(keep) = keep {
                        keep.extend_from_slice(&data[..take]);
                    }
                    *left -= take;
                    data = &data[take..];
                    if *left == 0 {
                        self.finish();
                    }
                }
            }
        }
    }

    fn finish(&mut self) {
        let framing = std::mem::replace(&mut self.framing, Framing::Header { len: 0, buf: [0; 5] });
        let Framing::Body { kind, keep: Some(body), .. } = framing else { return };
        match kind {
            b'Z' => {
                if let Some(&status) = body.first() {
                    self.status.status.store(status, Ordering::Release);
                }
                self.started = true;
                self.status.pg.message(kind, &body);
                self.status.answer();
            }
            b'S' => {
                let mut parts = body.split(|&b| b == 0);
                let name = parts.next().unwrap_or_default();
                let value = parts.next().unwrap_or_default();
                if name == b"client_encoding" {
                    let utf8 = value.eq_ignore_ascii_case(b"UTF8") || value.eq_ignore_ascii_case(b"UTF-8");
                    self.status.foreign_encoding.store(!utf8, Ordering::Release);
                }
                if self.started {
                    self.status.settings_changed.store(true, Ordering::Release);
                }
                self.status.report_setting(name, value);
            }
            b'C' => {
                if body.starts_with(b"PREPARE\0") {
                    self.status.prepared.store(true, Ordering::Release);
                }
                self.status.pg.message(kind, &body);
            }
            _ => self.status.pg.message(kind, &body),
        }
    }
}

/// Follows frontend messages and counts those that earn a ReadyForQuery.
#[derive(Debug)]
struct Writer {
    /// Messages still to come without a type byte: SSLRequest (which earns no answer), then
    /// the startup message (which earns one, at the end of authentication).
    untyped: u8,
    /// Header bytes collected: the type byte (when typed) and the 4-byte length.
    header: [u8; 5],
    len: usize,
    /// Body bytes left of the current message.
    left: usize,
}

impl Writer {
    fn new(ssl_requested: bool) -> Self {
        Self { untyped: if ssl_requested { 2 } else { 1 }, header: [0; 5], len: 0, left: 0 }
    }

    fn feed(&mut self, mut data: &[u8], status: &SessionStatus) {
        while !data.is_empty() {
            if self.left > 0 {
                let take = self.left.min(data.len());
                self.left -= take;
                data = &data[take..];
                continue;
            }
            let header_len = if self.untyped > 0 { 4 } else { 5 };
            let take = (header_len - self.len).min(data.len());
            self.header[self.len..self.len + take].copy_from_slice(&data[..take]);
            self.len += take;
            data = &data[take..];
            if self.len < header_len {
                continue;
            }
            let length = &self.header[header_len - 4..header_len];
            self.left = (u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize).saturating_sub(4);
            self.len = 0;
            if self.untyped > 0 {
                self.untyped -= 1;
                if self.untyped == 0 {
                    status.sent.fetch_add(1, Ordering::AcqRel);
                }
            } else if matches!(self.header[0], b'Q' | b'S') {
                status.sent.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}

/// A stream whose backend messages are watched (see the module docs).
#[derive(Debug)]
pub(crate) struct Watched<S> {
    inner: S,
    reader: Reader,
    writer: Writer,
}

impl<S> Watched<S> {
    /// Watches `inner`, recording into `status`; `ssl_requested`: the first byte read is the
    /// answer to an SSLRequest.
    pub(crate) fn new(inner: S, status: Arc<SessionStatus>, ssl_requested: bool) -> Self {
        let framing = if ssl_requested { Framing::SslAnswer } else { Framing::Header { len: 0, buf: [0; 5] } };
        Self { inner, reader: Reader { framing, started: false, status }, writer: Writer::new(ssl_requested) }
    }

    /// Counts what was written, unless the TLS layer above counts it.
    fn wrote(&mut self, data: &[u8]) {
        if !matches!(self.reader.framing, Framing::Off) {
            self.writer.feed(data, &self.reader.status);
        }
    }
}

impl<S> Drop for Watched<S> {
    /// The connection task ends without reading the end of the stream when tokio-postgres
    /// gives up on it (an error message outside a query, such as the FATAL of a terminated
    /// backend): no more answers will come either way.
    fn drop(&mut self) {
        self.reader.status.end();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => this.reader.feed(&buf.filled()[before..]),
            Poll::Ready(_) => this.reader.status.end(),
            Poll::Pending => {}
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.wrote(&buf[..n]);
        }
        polled
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = polled {
            for buf in bufs {
                let take = n.min(buf.len());
                self.wrote(&buf[..take]);
                n -= take;
                if n == 0 {
                    break;
                }
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: TlsStream + Unpin> TlsStream for Watched<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

/// A TLS connector whose decrypted stream is watched; channel binding and certificate checks
/// stay the wrapped connector's.
pub(crate) struct WatchedTls<T> {
    inner: T,
    status: Arc<SessionStatus>,
}

impl<T> WatchedTls<T> {
    /// Wraps `inner`, recording into `status`.
    pub(crate) fn new(inner: T, status: Arc<SessionStatus>) -> Self {
        Self { inner, status }
    }
}

impl<S, T> TlsConnect<S> for WatchedTls<T>
where
    T: TlsConnect<S>,
    T::Future: Send + 'static,
    T::Stream: Unpin,
{
    type Stream = Watched<T::Stream>;
    type Error = T::Error;
    type Future = BoxFuture<'static, Result<Self::Stream, T::Error>>;

    fn connect(self, stream: S) -> Self::Future {
        let status = self.status;
        self.inner.connect(stream).map(move |r| r.map(|tls| Watched::new(tls, status, false))).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn reader(ssl: bool) -> Reader {
        let framing = if ssl { Framing::SslAnswer } else { Framing::Header { len: 0, buf: [0; 5] } };
        Reader { framing, started: false, status: Arc::new(SessionStatus::default()) }
    }

    #[test]
    fn status_byte_is_read_whatever_the_chunking() {
        let mut stream = Vec::new();
        stream.extend(message(b'S', b"client_encoding\0UTF8\0"));
        stream.extend(message(b'Z', b"I"));
        stream.extend(message(b'D', &[7u8; 3000]));
        stream.extend(message(b'C', b"SELECT 1\0"));
        stream.extend(message(b'Z', b"T"));
        for chunk in [1, 2, 3, 5, 7, 64, 4096] {
            let mut r = reader(false);
            for piece in stream.chunks(chunk) {
                r.feed(piece);
            }
            assert_eq!(r.status.tx(), TxStatus::InTransaction, "chunk {chunk}");
            assert!(!r.status.take_settings_changed(), "startup settings are not changes");
        }
    }

    #[test]
    fn settings_encoding_and_prepare_are_noticed() {
        let mut r = reader(false);
        r.feed(&message(b'Z', b"I"));
        r.feed(&message(b'S', b"TimeZone\0Asia/Tokyo\0"));
        assert!(r.status.take_settings_changed());
        assert!(!r.status.take_settings_changed());
        r.feed(&message(b'S', b"client_encoding\0LATIN1\0"));
        assert!(r.status.foreign_encoding());
        r.feed(&message(b'C', b"PREPARE\0"));
        r.feed(&message(b'Z', b"E"));
        assert!(r.status.take_prepared());
        assert_eq!(r.status.tx(), TxStatus::Failed);
    }

    #[test]
    fn the_reported_role_follows_the_settings_as_they_are_read() {
        let mut r = reader(false);
        r.feed(&message(b'S', b"default_transaction_read_only\0off\0"));
        assert_eq!(r.status.reported_role(), None, "no in_hot_standby: the role is not reported");
        r.feed(&message(b'S', b"in_hot_standby\0off\0"));
        r.feed(&message(b'Z', b"I"));
        assert_eq!(r.status.reported_role(), Some(Role { standby: false, read_only: false }));
        r.feed(&message(b'S', b"default_transaction_read_only\0on\0"));
        assert_eq!(r.status.reported_role(), Some(Role { standby: false, read_only: true }));
        r.feed(&message(b'S', b"in_hot_standby\0on\0"));
        r.feed(&message(b'S', b"default_transaction_read_only\0off\0"));
        assert_eq!(r.status.reported_role(), Some(Role { standby: true, read_only: true }), "a standby is read-only");
        r.feed(&message(b'S', b"in_hot_standby\0off\0"));
        assert_eq!(r.status.reported_role(), Some(Role { standby: false, read_only: false }));
    }

    #[test]
    fn requests_and_answers_are_counted() {
        let status = SessionStatus::default();
        let mut w = Writer::new(true);
        let mut bytes = vec![0, 0, 0, 8, 4, 210, 22, 47]; // SSLRequest: no answer of its own
        bytes.extend([0, 0, 0, 9, 0, 3, 0, 0, 0]); // startup: one ReadyForQuery at the end
        bytes.extend(message(b'p', b"secret\0"));
        bytes.extend(message(b'P', &[0; 40]));
        bytes.extend(message(b'B', &[0; 12]));
        bytes.extend(message(b'S', b""));
        bytes.extend(message(b'Q', b"BEGIN\0"));
        for piece in bytes.chunks(3) {
            w.feed(piece, &status);
        }
        assert_eq!(status.sent.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn ssl_answer_comes_first() {
        let mut plain = reader(true);
        let mut bytes = vec![b'N'];
        bytes.extend(message(b'Z', b"T"));
        plain.feed(&bytes);
        assert_eq!(plain.status.tx(), TxStatus::InTransaction);
        let mut tls = reader(true);
        tls.feed(&[b'S', 0x16, 0x03, 0x03]);
        assert!(matches!(tls.framing, Framing::Off));
        assert_eq!(tls.status.tx(), TxStatus::Idle);
    }
}
