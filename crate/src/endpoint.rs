//! One PostgreSQL server: how to open a session on it (TCP, TLS, startup settings), its
//! health and its role as seen by every group that uses it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::{ChannelBinding as PgChannelBinding, SslMode as PgSslMode};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{CancelToken, Client, Connection, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{ChannelBinding, EndpointConfig, SslMode, TargetSessionAttrs};
use crate::error::pg_error_text;
use crate::events::{EventKind, Events};
use crate::role::{self, Role, RoleCell};
use crate::status::{SessionStatus, Watched, WatchedTls};

/// A session just opened: its client, what the server reports on it, and where it went.
pub(crate) struct Opened {
    /// The tokio-postgres client.
    pub(crate) client: Client,
    /// Transaction status and reported settings, kept current by the connection task.
    pub(crate) status: Arc<SessionStatus>,
    /// How to cancel what runs on it.
    pub(crate) cancel: CancelTarget,
    role: Option<Role>,
}

/// Why a session could not be opened.
struct OpenFailure {
    text: String,
    /// The server ended the starting session with 57P01 (terminated, or shutting down).
    terminated: bool,
}

/// What a cancel request needs: the session's key, and the address the session reached (so
/// the request goes to the same server even if the host name now resolves elsewhere).
pub(crate) struct CancelTarget {
    token: CancelToken,
    address: Option<SocketAddr>,
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// The server could not be reached or refused the session; counts against its health.
    Unreachable(String),
    /// The server works but has the wrong role for the group.
    WrongRole(String),
}

/// Outcome of a health check on an open session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The server answered.
    Alive,
    /// The session failed; the endpoint may still be fine.
    Dead,
    /// No answer within the limit; the session is unusable.
    Silent,
}

/// Health of one endpoint, shared by all groups.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Until when new connections avoid this endpoint.
    pub(crate) banned_until: Option<Instant>,
    /// Failures in a row.
    pub(crate) failures: u32,
    /// Last failure, for `stats()` and `DBOfflineError`.
    pub(crate) last_error: Option<String>,
    /// When a checkout last connected here although the endpoint was banned (see
    /// [`Endpoint::claim_forced_attempt`]).
    pub(crate) forced_at: Option<Instant>,
}

/// A configured server.
pub(crate) struct Endpoint {
    /// Its configuration (the password stays here and is never formatted).
    pub(crate) config: EndpointConfig,
    /// Its id, shared with events.
    pub(crate) id: Arc<str>,
    pg: tokio_postgres::Config,
    /// The same, with an `application_name` that tells health-probe sessions apart: they are
    /// short-lived and outside every group's `connection_count`.
    probe_pg: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
    /// Shared health state.
    pub(crate) health: Mutex<Health>,
    /// Last role the server reported or was seen to have.
    role: RoleCell,
    /// Some group cares about roles, so sessions learn it even on pre-14 servers.
    role_needed: bool,
    /// A background check of this endpoint is running.
    checking: AtomicBool,
    events: Arc<Events>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The configuration holds the password: only say which server this is.
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("host", &self.config.host)
            .field("port", &self.config.port)
            .finish_non_exhaustive()
    }
}

const BAN_BASE: Duration = Duration::from_millis(200);
// Short enough that a node that comes back gets traffic again within a few seconds; a probe
// of a node that is down costs one refused connect.
const BAN_MAX: Duration = Duration::from_secs(2);
/// Least time between two connects to a banned endpoint made because every endpoint of a group
/// was banned (see [`Endpoint::claim_forced_attempt`]).
const FORCED_GAP: Duration = BAN_BASE;

impl Endpoint {
    /// Prepares connection settings; fails only on an unusable TLS configuration.
    /// `role_needed`: some group using it has a `target_session_attrs` other than `any`.
    pub(crate) fn new(config: EndpointConfig, role_needed: bool, events: Arc<Events>) -> Result<Self, String> {
        let mut pg = tokio_postgres::Config::new();
        pg.host(&config.host).port(config.port).dbname(&config.name).user(&config.user).application_name(&config.application_name).options(
            format!(
                "-c statement_timeout={} -c temp_buffers={}MB{}{}",
                config.query_timeout,
                config.session_tmp_buffer,
                if config.options.is_empty() { "" } else { " " },
                config.options
            ),
        );
        if let Some(pass) = &config.pass {
            pg.password(pass);
        }
        pg.channel_binding(match config.channel_binding {
            ChannelBinding::Disable => PgChannelBinding::Disable,
            ChannelBinding::Prefer => PgChannelBinding::Prefer,
            ChannelBinding::Require => PgChannelBinding::Require,
        });
        let tls = match config.ssl {
            SslMode::Disable => None,
            mode => {
                pg.ssl_mode(if mode == SslMode::Prefer { PgSslMode::Prefer } else { PgSslMode::Require });
                Some(MakeRustlsConnect::new(tls_config(&config)?))
            }
        };
        let mut probe_pg = pg.clone();
        probe_pg.application_name(format!("{} (probe)", config.application_name));
        Ok(Self {
            id: Arc::from(config.id.as_str()),
            config,
            pg,
            probe_pg,
            tls,
            health: Mutex::new(Health::default()),
            role: RoleCell::default(),
            role_needed,
            checking: AtomicBool::new(false),
            events,
        })
    }

    /// `host:port` for messages.
    pub(crate) fn label(&self) -> String {
        format!("{}:{}", self.config.host, self.config.port)
    }

    /// The connect timeout as a duration.
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.config.connect_timeout)
    }

    /// Whether new connections should avoid this endpoint now.
    pub(crate) fn is_banned(&self, now: Instant) -> bool {
        self.health.lock().banned_until.is_some_and(|until| until > now)
    }

    /// Claims a connect attempt on this banned endpoint for a checkout that found every endpoint
    /// of its group banned ("trying beats failing blind"). One such attempt per `FORCED_GAP`,
    /// whoever asks: without the limit each checkout made its own attempt, and with the only
    /// server down a crowd of callers turned into thousands of refused connects a second (the
    /// pool spinning while its server restarts). Checkouts that get no attempt fail at once
    /// with `DBOfflineError`.
    pub(crate) fn claim_forced_attempt(&self, now: Instant) -> bool {
        let mut health = self.health.lock();
        if health.forced_at.is_some_and(|t| now.saturating_duration_since(t) < FORCED_GAP) {
            return false;
        }
        health.forced_at = Some(now);
        true
    }

    /// `label: last error` of a banned endpoint, for `DBOfflineError`.
    pub(crate) fn banned_cause(&self) -> String {
        let health = self.health.lock();
        format!("{}: {} (banned)", self.label(), health.last_error.as_deref().unwrap_or("unreachable"))
    }

    /// Records a failed attempt and bans the endpoint with jittered exponential backoff.
    pub(crate) fn record_failure(&self, error: &str) {
        let newly = {
            let mut health = self.health.lock();
            health.failures = health.failures.saturating_add(1);
            let exp = BAN_BASE.saturating_mul(1 << health.failures.min(6)).min(BAN_MAX);
            let jitter = 0.75 + fastrand::f64() * 0.5;
            health.banned_until = Some(Instant::now() + exp.mul_f64(jitter));
            health.last_error = Some(error.to_string());
            health.failures == 1
        };
        if newly {
            self.events.record(EventKind::Ban, None, Some(&self.id), Some(error.to_string()));
        }
    }

    /// Records a successful session: the endpoint is healthy again.
    pub(crate) fn record_success(&self) {
        let was_failing = {
            let mut health = self.health.lock();
            let was = health.failures > 0;
            health.failures = 0;
            health.banned_until = None;
            was
        };
        if was_failing {
            self.events.record(EventKind::Unban, None, Some(&self.id), None);
        }
    }

    /// The server's last known role.
    pub(crate) fn role(&self) -> Option<Role> {
        self.role.get()
    }

    /// Whether a group with `wanted` may use this endpoint, as far as we know (an unknown role
    /// is checked when a session is opened).
    pub(crate) fn allows(&self, wanted: TargetSessionAttrs) -> bool {
        self.role.get().is_none_or(|r| r.fits(wanted))
    }

    /// Records the server's role; a change is an event.
    pub(crate) fn set_role(&self, role: Role) {
        if self.role.set(role).is_some() {
            self.events.record(EventKind::RoleChange, None, Some(&self.id), Some(role.describe().into()));
        }
    }

    /// Claims the right to run a background check; `false` if one is already running.
    pub(crate) fn begin_check(&self) -> bool {
        !self.checking.swap(true, Ordering::AcqRel)
    }

    /// Ends a background check claimed with [`Endpoint::begin_check`].
    pub(crate) fn end_check(&self) {
        self.checking.store(false, Ordering::Release);
    }

    /// Opens a session set up for a group that wants `wanted`, within the connect timeout.
    pub(crate) async fn connect(self: &Arc<Self>, wanted: TargetSessionAttrs, sqlprepare: bool) -> Result<Opened, ConnectError> {
        self.connect_with(&self.pg, wanted, sqlprepare).await
    }

    async fn connect_with(
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

    /// Opens and closes a session to see whether the server answers (learning its role on the
    /// way); bans or re-admits the endpoint accordingly.
    pub(crate) async fn probe(self: &Arc<Self>) -> bool {
        match self.connect_with(&self.probe_pg, TargetSessionAttrs::Any, false).await {
            Ok(opened) => {
                drop(opened);
                self.record_success();
                true
            }
            Err(ConnectError::Unreachable(text) | ConnectError::WrongRole(text)) => {
                self.record_failure(&text);
                false
            }
        }
    }

    /// Health check through an open session within `limit`: the role query when some group
    /// cares about roles (which also records the role), else an empty query. Silence bans
    /// the endpoint only when `limit` is the full connect timeout.
    pub(crate) async fn check_session(&self, client: &Client, limit: Duration) -> Answer {
        let work = async {
            if self.role_needed {
                role::query_role(client).await.map(|r| self.set_role(r))
            } else {
                client.simple_query("").await.map(|_| ())
            }
        };
        match tokio::time::timeout(limit, work).await {
            Ok(Ok(())) => Answer::Alive,
            Ok(Err(_)) => Answer::Dead,
            Err(_) => {
                if limit >= self.connect_timeout() {
                    self.record_failure(&format!("health check timeout: no answer within {}s", self.config.connect_timeout));
                }
                Answer::Silent
            }
        }
    }

    /// Asks the server to cancel the statement running on a session. The request goes to the
    /// address the session reached, over TLS when the endpoint uses TLS (servers accept an
    /// SSLRequest on a cancel connection), and a failed cancel is harmless.
    ///
    /// Like libpq, we keep the cancel connection open until the other side closes it.
    /// tokio-postgres's own `cancel_query` half-closes the socket right after the request, and
    /// PgBouncer (1.18 at least) takes that EOF as the client giving up: it drops the request
    /// without passing it on, so the statement is never cancelled, and now and then it dies on
    /// it (`FATAL ... disconnect_client(): bad client state: 0`, pgbouncer issue #801).
    ///
    /// Waiting for the close matters too: the server cancels whatever statement runs when the
    /// request arrives, so a request still on its way when the statement it was meant for ended
    /// would cancel the next statement on that session (the soak test saw this). Callers run
    /// nothing more on the session until this returns; it is a best effort (a proxy may close
    /// the cancel connection before passing it on), so a cancelled session is also never
    /// handed to another user.
    pub(crate) async fn cancel(&self, target: &CancelTarget) {
        let socket = match target.address {
            Some(address) => TcpStream::connect(address).await.map(Socket::Tcp),
            None if self.config.host.starts_with('/') => {
                UnixStream::connect(format!("{}/.s.PGSQL.{}", self.config.host, self.config.port)).await.map(Socket::Unix)
            }
            None => TcpStream::connect((self.config.host.as_str(), self.config.port)).await.map(Socket::Tcp),
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

    /// Opens the socket and runs the startup through `connect_raw`, with the byte stream
    /// watched (see `status.rs`) below TLS, or above it when the session is encrypted.
    async fn open(self: &Arc<Self>, pg: &tokio_postgres::Config) -> Result<Opened, OpenFailure> {
        let (socket, address) = self.socket().await.map_err(|text| OpenFailure { text, terminated: false })?;
        let status = Arc::new(SessionStatus::default());
        let failed = |e: tokio_postgres::Error| OpenFailure {
            terminated: e.as_db_error().is_some_and(|db| *db.code() == tokio_postgres::error::SqlState::ADMIN_SHUTDOWN),
            text: connect_error_text(&e, &self.config),
        };
        let (client, role) = match &self.tls {
            None => {
                let (client, connection) = pg.connect_raw(Watched::new(socket, status.clone(), false), NoTls).await.map_err(failed)?;
                (client, self.drive(connection))
            }
            Some(tls) => {
                let connector = match MakeTlsConnect::<Watched<Socket>>::make_tls_connect(&mut tls.clone(), &self.config.host) {
                    Ok(connector) => connector,
                    Err(never) => match never {},
                };
                let watched = Watched::new(socket, status.clone(), true);
                let (client, connection) = pg.connect_raw(watched, WatchedTls::new(connector, status.clone())).await.map_err(failed)?;
                (client, self.drive(connection))
            }
        };
        let cancel = CancelTarget { token: client.cancel_token(), address };
        Ok(Opened { client, role, status, cancel })
    }

    /// A connected socket to the server and the address it reached (`None` for a Unix-domain
    /// socket): keepalives on, Nagle off, as tokio-postgres's own connect does.
    async fn socket(&self) -> Result<(Socket, Option<SocketAddr>), String> {
        let host = self.config.host.as_str();
        let port = self.config.port;
        let refused = |e: io::Error| format!("error connecting to server: {e}");
        if host.starts_with('/') {
            let path = format!("{host}/.s.PGSQL.{port}");
            return Ok((Socket::Unix(UnixStream::connect(path).await.map_err(refused)?), None));
        }
        let tcp = TcpStream::connect((host, port)).await.map_err(refused)?;
        tcp.set_nodelay(true).map_err(refused)?;
        // A peer that vanished without a FIN is noticed in about a minute, not the kernel's
        // default of two hours plus eleven minutes.
        let keepalive = TcpKeepalive::new().with_time(Duration::from_secs(30)).with_interval(Duration::from_secs(10)).with_retries(3);
        SockRef::from(&tcp).set_tcp_keepalive(&keepalive).map_err(refused)?;
        let address = tcp.peer_addr().ok();
        Ok((Socket::Tcp(tcp), address))
    }

    /// Spawns the session's connection task, which keeps this endpoint's role current from
    /// what the server reports; returns the role reported at startup.
    fn drive<S, T>(self: &Arc<Self>, connection: Connection<S, T>) -> Option<Role>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let reported = role::reported_role(&connection);
        let endpoint = Arc::downgrade(self);
        tokio::spawn(role::drive(connection, reported, move |role| {
            if let Some(endpoint) = endpoint.upgrade() {
                endpoint.set_role(role);
            }
        }));
        reported
    }
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Encryption only (`prefer`, `require` without `ssl_ca`).
    None,
    /// The chain up to a trusted CA, host name not checked (`verify-ca`, `require` with `ssl_ca`).
    Chain,
    /// Chain and host name (`verify-full`).
    Full,
}

fn check_for(mode: SslMode, has_ca: bool) -> Check {
    match mode {
        SslMode::Disable | SslMode::Prefer => Check::None,
        // libpq: "if a root CA file exists, sslmode=require behaves like verify-ca".
        SslMode::Require if has_ca => Check::Chain,
        SslMode::Require => Check::None,
        SslMode::VerifyCa => Check::Chain,
        SslMode::VerifyFull => Check::Full,
    }
}

fn tls_config(config: &EndpointConfig) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(|e| e.to_string())?.dangerous();
    let ca_pem = config.ssl_ca.as_deref();
    let builder = match check_for(config.ssl, ca_pem.is_some()) {
        Check::None => builder.with_custom_certificate_verifier(Arc::new(EncryptOnly(provider))),
        check => {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider).build().map_err(|e| e.to_string())?;
            if check == Check::Full {
                builder.with_custom_certificate_verifier(webpki)
            } else {
                builder.with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
            }
        }
    };
    match (config.ssl_cert.as_deref(), config.ssl_key.as_deref()) {
        (Some(cert_pem), Some(key_pem)) => {
            let certs =
                rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| format!("ssl_cert: {e}"))?;
            if certs.is_empty() {
                return Err("ssl_cert: no certificate found in PEM".into());
            }
            // Never echo the key's text: only say what is wrong with it.
            let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
                .map_err(|_| "ssl_key: unreadable PEM".to_string())?
                .ok_or_else(|| "ssl_key: no private key found in PEM".to_string())?;
            builder.with_client_auth_cert(certs, key).map_err(|e| format!("ssl_cert / ssl_key: {e}"))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err("ssl_cert and ssl_key must be given together".into()),
    }
}

fn roots(ca_pem: Option<&str>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match ca_pem {
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(pem) => {
            for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
                let cert = cert.map_err(|e| format!("ssl_ca: {e}"))?;
                store.add(cert).map_err(|e| format!("ssl_ca: {e}"))?;
            }
            if store.is_empty() {
                return Err("ssl_ca: no certificate found in PEM".into());
            }
        }
    }
    Ok(store)
}

/// Text of a failed connection attempt; a rejected server certificate gets a hint at its
/// likely cause, since rustls names some of them only by variant (`UnknownIssuer`).
fn connect_error_text(err: &tokio_postgres::Error, config: &EndpointConfig) -> String {
    let text = pg_error_text(err);
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        // An io::Error's `source()` skips the error it wraps, so look inside it.
        let inner = cause.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).map(|e| e as &(dyn std::error::Error + 'static));
        for candidate in [Some(cause), inner].into_iter().flatten() {
            if let Some(rustls::Error::InvalidCertificate(cert_err)) = candidate.downcast_ref::<rustls::Error>() {
                let hint = certificate_hint(cert_err, config);
                return format!("server certificate rejected (ssl={}): {text}{hint}", config.ssl.as_str());
            }
        }
        source = cause.source();
    }
    text
}

fn certificate_hint(err: &CertificateError, config: &EndpointConfig) -> String {
    match err {
        CertificateError::UnknownIssuer if config.ssl_ca.is_some() => " (it is not signed by a CA in ssl_ca)".to_string(),
        CertificateError::UnknownIssuer => {
            " (it is not signed by a public CA; set ssl_ca to the CA that signed the server's certificate)".to_string()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
            " (host name '{}' is not in the certificate; connect by a name it lists, or use ssl=verify-ca to skip the host name check)",
            config.host
        ),
        _ => String::new(),
    }
}

/// `prefer`, and `require` without `ssl_ca`: encrypted, but any certificate is accepted
/// (libpq's meaning).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full chain check, with only the host-name mismatch forgiven.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A session's transport.
#[derive(Debug)]
pub(crate) enum Socket {
    /// TCP.
    Tcp(TcpStream),
    /// A Unix-domain socket (`host` is a directory).
    Unix(UnixStream),
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Socket::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Tcp(s) => s.is_write_vectored(),
            Socket::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
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
