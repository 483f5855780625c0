//! Cancel requests: sent to the address the session reached, over TLS when the endpoint uses
//! it, with the connection held open until the server closes it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{CancelToken, NoTls};

use super::connect::Socket;
use super::Endpoint;

/// What a cancel request needs: the session's key, and the address the session reached (so
/// the request goes to the same server even if the host name now resolves elsewhere).
pub(crate) struct CancelTarget {
    pub(super) token: CancelToken,
    pub(super) address: Option<SocketAddr>,
}

impl Endpoint {
    /// Asks the server to cancel the statement running on a session. The request goes to the
    /// address the session reached, over TLS when the endpoint uses TLS (servers accept an
    /// SSLRequest on a cancel connection), and a failed cancel is harmless.
    ///
    /// Like libpq, we keep the cancel connection open until the other side closes it.
    /// tokio-postgres's own `cancel_query` half-closes the socket right after the request, and
    /// PgBouncer (1.18 at least) takes that EOF as the client giving up: it drops the request
    /// without passing it on, so the statement is never cancelled, and now and then it dies on
    /// it (`FATAL ... disconnect_client(): bad client state: 0`).
    ///
    /// Waiting for the close matters too: the server cancels whatever statement runs when the
    /// request arrives, so a request still on its way when the statement it was meant for ended
    /// would cancel the next statement on that session. Callers run
    /// nothing more on the session until this returns; it is a best effort (a proxy may close
    /// the cancel connection before passing it on), so a cancelled session is also never
    /// handed to another user.
    pub(crate) async fn cancel(&self, target: &CancelTarget) {
        let socket = match target.address {
            Some(address) => TcpStream::connect(address).await.map(Socket::tcp),
            None if self.config.host.starts_with('/') => {
                UnixStream::connect(format!("{}/.s.PGSQL.{}", self.config.host, self.config.port)).await.map(Socket::unix)
            }
            None => TcpStream::connect((self.config.host.as_str(), self.config.port)).await.map(Socket::tcp),
        };
        let Ok(socket) = socket else { return };
        let socket = WaitForClose(socket);
        let _ = match &self.tls {
            None => target.token.cancel_query_raw(socket, NoTls).await,
            Some(tls) => match MakeTlsConnect::<WaitForClose>::make_tls_connect(&mut tls.clone(), &self.config.host) {
                Ok(connector) => target.token.cancel_query_raw(socket, connector).await,
                Err(never) => match never {},
            },
        };
    }
}

/// A socket whose shutdown, instead of closing the write side, waits for the peer to close
/// the connection (see [`Endpoint::cancel`]). Under TLS the close_notify goes out first.
struct WaitForClose(Socket);

impl AsyncRead for WaitForClose {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for WaitForClose {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut sink = [0u8; 64];
        loop {
            let mut buf = ReadBuf::new(&mut sink);
            match Pin::new(&mut self.0).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                // Closed (or failed): the server is done with the request.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
