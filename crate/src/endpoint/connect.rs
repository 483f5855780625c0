//! Opening a session: the socket (TCP or Unix-domain), TLS, the startup through
//! `connect_raw` with the byte stream watched, the role check and `sqlprepare`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Connection, NoTls};

use super::tls::connect_error_text;
use super::{CancelTarget, Endpoint};
use crate::config::TargetSessionAttrs;
use crate::driver::Driver;
use crate::error::pg_error_text;
use crate::role::{self, Role};
use crate::status::{SessionStatus, Watched, WatchedTls};

/// A session just opened: its client, what the server reports on it, and where it went.
pub(crate) struct Opened {
    /// The tokio-postgres client.
    pub(crate) client: Client,
    /// Transaction status and reported settings, kept current by the connection task.
    pub(crate) status: Arc<SessionStatus>,
    /// How to cancel what runs on it.
    pub(crate) cancel: CancelTarget,
    /// Who polls its connection (see `driver`).
    pub(crate) driver: Arc<Driver>,
    role: Option<Role>,
}

/// Why a session could not be opened.
struct OpenFailure {
    text: String,
    /// The server ended the starting session with `ADMIN_SHUTDOWN` (terminated, or shutting down).
    terminated: bool,
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// The server could not be reached or refused the session; counts against its health.
    Unreachable(String),
    /// The server works but has the wrong role for the group.
    WrongRole(String),
}

impl Endpoint {
    /// Opens a session set up for a group that wants `wanted`, within the connect timeout.
    pub(crate) async fn connect(self: &Arc<Self>, wanted: TargetSessionAttrs, sqlprepare: bool) -> Result<Opened, ConnectError> {
        self.connect_with(&self.pg, wanted, sqlprepare).await
    }

    pub(super) async fn connect_with(
        self: &Arc<Self>,
        pg: &tokio_postgres::Config,
        wanted: TargetSessionAttrs,
        sqlprepare: bool,
    ) -> Result<Opened, ConnectError> {
        let attempt = async {
            let mut retried = false;
            let opened = loop {
                match self.open(pg).await {
                    Ok(opened) => break opened,
                    // A session terminated while it started (pg_terminate_backend of a backend
                    // still starting) says nothing about the server: once more. A server that
                    // is shutting down refuses the second attempt.
                    Err(failure) if failure.terminated && !retried => retried = true,
                    Err(failure) => return Err(ConnectError::Unreachable(failure.text)),
                }
            };
            let client = &opened.client;
            let role = match opened.role {
                Some(role) => Some(role),
                None if wanted != TargetSessionAttrs::Any || self.role_needed => {
                    Some(role::query_role(client).await.map_err(|e| ConnectError::Unreachable(pg_error_text(&e)))?)
                }
                None => None,
            };
            if let Some(role) = role {
                self.set_role(role);
                if !role.fits(wanted) {
                    return Err(ConnectError::WrongRole(format!(
                        "server is a {}, target_session_attrs is '{}'",
                        role.describe(),
                        wanted.as_str()
                    )));
                }
            }
            if sqlprepare {
                client
                    .batch_execute(r#"SELECT "SQLPrepare"."PrepareQueries"()"#)
                    .await
                    .map_err(|e| ConnectError::Unreachable(format!("sqlprepare failed: {}", pg_error_text(&e))))?;
            }
            Ok(opened)
        };
        match tokio::time::timeout(self.connect_timeout(), attempt).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Unreachable(format!("connect timeout after {}s", self.config.connect_timeout))),
        }
    }

    /// Opens the socket and runs the startup through `connect_raw`, with the byte stream
    /// watched (see `status.rs`) below TLS, or above it when the session is encrypted.
    async fn open(self: &Arc<Self>, pg: &tokio_postgres::Config) -> Result<Opened, OpenFailure> {
        let (socket, address) = self.socket().await.map_err(|text| OpenFailure { text, terminated: false })?;
        let fd = socket.fd();
        let status = Arc::new(SessionStatus::default());
        let failed = |e: tokio_postgres::Error| OpenFailure {
            terminated: e.as_db_error().is_some_and(|db| *db.code() == SqlState::ADMIN_SHUTDOWN),
            text: connect_error_text(&e, &self.config),
        };
        let (client, (role, driver)) = match &self.tls {
            None => {
                let (client, connection) = pg.connect_raw(Watched::new(socket, status.clone(), false), NoTls).await.map_err(failed)?;
                (client, self.drive(connection, fd, status.clone()))
            }
            Some(tls) => {
                let connector = match MakeTlsConnect::<Watched<Socket>>::make_tls_connect(&mut tls.clone(), &self.config.host) {
                    Ok(connector) => connector,
                    Err(never) => match never {},
                };
                let watched = Watched::new(socket, status.clone(), true);
                let (client, connection) = pg.connect_raw(watched, WatchedTls::new(connector, status.clone())).await.map_err(failed)?;
                (client, self.drive(connection, fd, status.clone()))
            }
        };
        let cancel = CancelTarget { token: client.cancel_token(), address };
        Ok(Opened { client, role, status, cancel, driver })
    }

    /// A connected socket to the server and the address it reached (`None` for a Unix-domain
    /// socket): keepalives on, Nagle off, as tokio-postgres's own connect does.
    async fn socket(&self) -> Result<(Socket, Option<SocketAddr>), String> {
        let host = self.config.host.as_str();
        let port = self.config.port;
        let refused = |e: io::Error| format!("error connecting to server: {e}");
        if host.starts_with('/') {
            let path = format!("{host}/.s.PGSQL.{port}");
            return Ok((Socket::unix(UnixStream::connect(path).await.map_err(refused)?), None));
        }
        let tcp = TcpStream::connect((host, port)).await.map_err(refused)?;
        tcp.set_nodelay(true).map_err(refused)?;
        // A peer that vanished without a FIN is noticed in about a minute, not the kernel's
        // default of two hours plus eleven minutes.
        let keepalive = TcpKeepalive::new().with_time(Duration::from_secs(30)).with_interval(Duration::from_secs(10)).with_retries(3);
        SockRef::from(&tcp).set_tcp_keepalive(&keepalive).map_err(refused)?;
        let address = tcp.peer_addr().ok();
        Ok((Socket::tcp(tcp), address))
    }

    /// Starts driving the session's connection, which keeps this endpoint's role current from
    /// what the server reports; returns the role reported at startup, and the driver.
    fn drive<S, T>(
        self: &Arc<Self>,
        connection: Connection<S, T>,
        fd: crate::driver::Fd,
        status: Arc<SessionStatus>,
    ) -> (Option<Role>, Arc<Driver>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let reported = status.reported_role();
        let endpoint = Arc::downgrade(self);
        let drive = role::drive(connection, status, reported, move |role| {
            if let Some(endpoint) = endpoint.upgrade() {
                endpoint.set_role(role);
            }
        });
        (reported, Driver::spawn(drive, fd))
    }
}

/// A session's socket. Dropped while a JS thread's loop watches it, it stays open until that
/// loop has closed its handle for it (see `driver::watch_fd`).
#[derive(Debug)]
pub(crate) struct Socket(Transport);

impl Socket {
    pub(crate) fn tcp(stream: TcpStream) -> Self {
        Self(Transport::Tcp(stream))
    }

    pub(crate) fn unix(stream: UnixStream) -> Self {
        Self(Transport::Unix(stream))
    }

    fn fd(&self) -> crate::driver::Fd {
        self.0.fd()
    }
}

impl Drop for Socket {
    #[cfg(unix)]
    fn drop(&mut self) {
        use std::os::fd::OwnedFd;
        let socket: Option<OwnedFd> = match std::mem::replace(&mut self.0, Transport::Moving) {
            // Out of tokio's reactor first, while the descriptor is still this socket's.
            Transport::Tcp(s) => s.into_std().ok().map(OwnedFd::from),
            Transport::Unix(s) => s.into_std().ok().map(OwnedFd::from),
            Transport::TcpDirect(s) => Some(OwnedFd::from(s)),
            Transport::UnixDirect(s) => Some(OwnedFd::from(s)),
            Transport::Moving => None,
        };
        if let Some(socket) = socket {
            drop(crate::driver::retire_fd(socket));
        }
    }

    #[cfg(not(unix))]
    fn drop(&mut self) {}
}

/// How a session's socket is held: in tokio's reactor, or out of it.
#[derive(Debug)]
enum Transport {
    /// TCP.
    Tcp(TcpStream),
    /// A Unix-domain socket (`host` is a directory).
    Unix(UnixStream),
    /// TCP out of tokio's reactor, while a JS thread's event loop watches it (see `driver`):
    /// registered, every answer the JS thread reads would also wake the worker for nothing.
    TcpDirect(std::net::TcpStream),
    /// A Unix-domain socket out of tokio's reactor (as `TcpDirect`).
    UnixDirect(std::os::unix::net::UnixStream),
    /// Between two of the above, or after a move between them failed.
    Moving,
}

impl Transport {
    #[cfg(unix)]
    fn fd(&self) -> crate::driver::Fd {
        use std::os::fd::AsRawFd;
        match self {
            Transport::Tcp(s) => s.as_raw_fd(),
            Transport::Unix(s) => s.as_raw_fd(),
            Transport::TcpDirect(s) => s.as_raw_fd(),
            Transport::UnixDirect(s) => s.as_raw_fd(),
            Transport::Moving => -1,
        }
    }

    #[cfg(not(unix))]
    fn fd(&self) -> crate::driver::Fd {}

    /// The socket for a direct read or write from the JS thread: taken out of tokio's reactor
    /// first if it is in it.
    fn direct(&mut self) -> io::Result<SockRef<'_>> {
        if matches!(self, Transport::Tcp(_) | Transport::Unix(_)) {
            *self = match std::mem::replace(self, Transport::Moving) {
                Transport::Tcp(s) => Transport::TcpDirect(s.into_std()?),
                Transport::Unix(s) => Transport::UnixDirect(s.into_std()?),
                other => other,
            };
        }
        match self {
            Transport::TcpDirect(s) => Ok(SockRef::from(&*s)),
            Transport::UnixDirect(s) => Ok(SockRef::from(&*s)),
            _ => Err(moving()),
        }
    }

    /// The socket in tokio's reactor, for the worker: put back into it first if it is out.
    fn registered(&mut self) -> io::Result<&mut Self> {
        if matches!(self, Transport::TcpDirect(_) | Transport::UnixDirect(_)) {
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(io::Error::other("pgdbpool: a session's socket was polled outside the core's runtime"));
            }
            *self = match std::mem::replace(self, Transport::Moving) {
                Transport::TcpDirect(s) => Transport::Tcp(TcpStream::from_std(s)?),
                Transport::UnixDirect(s) => Transport::Unix(UnixStream::from_std(s)?),
                other => other,
            };
        }
        match self {
            Transport::Moving => Err(moving()),
            _ => Ok(self),
        }
    }
}

/// A stream in tokio's reactor, as the writes see it.
type Registered<'a> = Pin<&'a mut (dyn AsyncWrite + Unpin + Send)>;

impl Transport {
    /// A write: directly on the JS thread (see `driver`) with `direct_write`, else through
    /// tokio's reactor with `tokio_write`.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        direct_write: impl FnOnce(&socket2::Socket) -> io::Result<usize>,
        tokio_write: impl FnOnce(Registered<'_>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if crate::driver::on_js() {
            return match self.direct() {
                Ok(sock) => direct(direct_write(&sock), true),
                Err(e) => Poll::Ready(Err(e)),
            };
        }
        match self.registered() {
            Ok(Transport::Tcp(s)) => tokio_write(Pin::new(s), cx),
            Ok(Transport::Unix(s)) => tokio_write(Pin::new(s), cx),
            Ok(_) => Poll::Ready(Err(moving())),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

fn moving() -> io::Error {
    io::Error::other("pgdbpool: a session's socket could not be moved between tokio and the JS thread's event loop")
}

/// A direct read or write from the JS thread (see `driver`): a full or empty socket is
/// `Pending`, and the JS thread's event loop polls again when it is ready.
fn direct<T>(result: io::Result<T>, writing: bool) -> Poll<io::Result<T>> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            if writing {
                crate::driver::wants_write();
            } else {
                crate::driver::read_nothing();
            }
            Poll::Pending
        }
        other => Poll::Ready(other),
    }
}

impl AsyncRead for Socket {
    #[allow(unsafe_code)]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut self.get_mut().0;
        if crate::driver::on_js() {
            if !crate::driver::may_read() {
                return Poll::Pending;
            }
            let sock = match this.direct() {
                Ok(sock) => sock,
                Err(e) => return Poll::Ready(Err(e)),
            };
            // Read into the buffer's uninitialised room: zeroing it first (`initialize_unfilled`)
            // cost as much as a small answer's parsing.
            // SAFETY: `recv` only writes into the room, and the first `n` bytes it reports are
            // marked initialised below, no more.
            let room = unsafe { buf.unfilled_mut() };
            let wanted = room.len();
            let read = sock.recv(room);
            return direct(read, false).map_ok(|n| {
                // A stream socket's read returns less than asked only when it has no more now.
                if n > 0 && n < wanted {
                    crate::driver::read_nothing();
                }
                unsafe { buf.assume_init(n) };
                buf.advance(n);
            });
        }
        match this.registered() {
            Ok(Transport::Tcp(s)) => Pin::new(s).poll_read(cx, buf),
            Ok(Transport::Unix(s)) => Pin::new(s).poll_read(cx, buf),
            Ok(_) => Poll::Ready(Err(moving())),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        use std::io::Write;
        self.get_mut().0.poll_write_with(cx, |sock| (&*sock).write(buf), |stream, cx| stream.poll_write(cx, buf))
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        use std::io::Write;
        self.get_mut().0.poll_write_with(cx, |sock| (&*sock).write_vectored(bufs), |stream, cx| stream.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Writes to a socket are not buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut self.get_mut().0;
        Poll::Ready(match this {
            Transport::Tcp(s) => SockRef::from(&*s).shutdown(std::net::Shutdown::Write),
            Transport::Unix(s) => SockRef::from(&*s).shutdown(std::net::Shutdown::Write),
            Transport::TcpDirect(s) => s.shutdown(std::net::Shutdown::Write),
            Transport::UnixDirect(s) => s.shutdown(std::net::Shutdown::Write),
            Transport::Moving => Err(moving()),
        })
    }
}
