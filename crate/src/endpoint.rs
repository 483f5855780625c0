//! One PostgreSQL server: how to open a session on it (TCP, TLS, startup settings), its
//! health and its role as seen by every group that uses it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::{Client, Connection, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{EndpointConfig, SslMode, TargetSessionAttrs};
use crate::error::pg_error_text;
use crate::events::{EventKind, Events};
use crate::role::{self, Role, RoleCell};

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum ConnectError {
    /// The server could not be reached or refused the session; counts against its health.
    Unreachable(String),
    /// The server works but has the wrong role for the group.
    WrongRole(String),
}

/// Outcome of a health check on an open session.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// The server answered.
    Alive,
    /// The session failed; the endpoint may still be fine.
    Dead,
    /// No answer within the limit; the session is unusable.
    Silent,
}

/// Health of one endpoint, shared by all groups.
#[derive(Debug, Default)]
pub struct Health {
    /// Until when new connections avoid this endpoint.
    pub banned_until: Option<Instant>,
    /// Failures in a row.
    pub failures: u32,
    /// Last failure, for `stats()` and `DBOfflineError`.
    pub last_error: Option<String>,
}

/// A configured server.
pub struct Endpoint {
    /// Its configuration (the password stays here and is never formatted).
    pub config: EndpointConfig,
    /// Its id, shared with events.
    pub id: Arc<str>,
    pg: tokio_postgres::Config,
    /// The same, with an `application_name` that tells health-probe sessions apart: they are
    /// short-lived and outside every group's `connection_count`.
    probe_pg: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
    /// Shared health state.
    pub health: Mutex<Health>,
    /// Last role the server reported or was seen to have.
    role: RoleCell,
    /// Some group cares about roles, so sessions learn it even on pre-14 servers.
    role_needed: bool,
    /// A background check of this endpoint is running.
    checking: AtomicBool,
    events: Arc<Events>,
}

const BAN_BASE: Duration = Duration::from_millis(200);
// Short enough that a node that comes back gets traffic again within a few seconds; a probe
// of a node that is down costs one refused connect.
const BAN_MAX: Duration = Duration::from_secs(2);

impl Endpoint {
    /// Prepares connection settings; fails only on an unusable TLS configuration.
    /// `role_needed`: some group using it has a `target_session_attrs` other than `any`.
    pub fn new(config: EndpointConfig, role_needed: bool, events: Arc<Events>) -> Result<Self, String> {
        let mut pg = tokio_postgres::Config::new();
        pg.host(&config.host)
            .port(config.port)
            .dbname(&config.name)
            .user(&config.user)
            .application_name(&config.application_name)
            .connect_timeout(Duration::from_secs_f64(config.connect_timeout))
            // A peer that vanished without a FIN is noticed in about a minute, not the
            // kernel's default of two hours plus eleven minutes.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3)
            .options(format!(
                "-c statement_timeout={} -c temp_buffers={}MB",
                config.query_timeout, config.session_tmp_buffer
            ));
        if let Some(pass) = &config.pass {
            pg.password(pass);
        }
        let tls = match config.ssl {
            SslMode::Disable => None,
            mode => {
                pg.ssl_mode(if mode == SslMode::Prefer { PgSslMode::Prefer } else { PgSslMode::Require });
                Some(MakeRustlsConnect::new(tls_config(mode, config.ssl_ca.as_deref())?))
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
    pub fn label(&self) -> String {
        format!("{}:{}", self.config.host, self.config.port)
    }

    /// The connect timeout as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.config.connect_timeout)
    }

    /// Whether new connections should avoid this endpoint now.
    pub fn is_banned(&self, now: Instant) -> bool {
        self.health.lock().banned_until.is_some_and(|until| until > now)
    }

    /// Records a failed attempt and bans the endpoint with jittered exponential backoff.
    pub fn record_failure(&self, error: &str) {
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
    pub fn record_success(&self) {
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
    pub fn role(&self) -> Option<Role> {
        self.role.get()
    }

    /// Whether a group with `wanted` may use this endpoint, as far as we know (an unknown role
    /// is checked when a session is opened).
    pub fn allows(&self, wanted: TargetSessionAttrs) -> bool {
        self.role.get().is_none_or(|r| r.fits(wanted))
    }

    /// Records the server's role; a change is an event.
    pub fn set_role(&self, role: Role) {
        if self.role.set(role).is_some() {
            self.events.record(EventKind::RoleChange, None, Some(&self.id), Some(role.describe().into()));
        }
    }

    /// Claims the right to run a background check; `false` if one is already running.
    pub fn begin_check(&self) -> bool {
        !self.checking.swap(true, Ordering::AcqRel)
    }

    /// Ends a background check claimed with [`Endpoint::begin_check`].
    pub fn end_check(&self) {
        self.checking.store(false, Ordering::Release);
    }

    /// Opens a session set up for a group that wants `wanted`, within the connect timeout.
    pub async fn connect(self: &Arc<Self>, wanted: TargetSessionAttrs, sqlprepare: bool) -> Result<Client, ConnectError> {
        self.connect_with(&self.pg, wanted, sqlprepare).await
    }

    async fn connect_with(self: &Arc<Self>, pg: &tokio_postgres::Config, wanted: TargetSessionAttrs, sqlprepare: bool) -> Result<Client, ConnectError> {
        let attempt = async {
            let (client, reported) = self.open(pg).await.map_err(|e| ConnectError::Unreachable(pg_error_text(&e)))?;
            let role = match reported {
                Some(role) => Some(role),
                None if wanted != TargetSessionAttrs::Any || self.role_needed => {
                    Some(role::query_role(&client).await.map_err(|e| ConnectError::Unreachable(pg_error_text(&e)))?)
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
            Ok(client)
        };
        match tokio::time::timeout(self.connect_timeout(), attempt).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Unreachable(format!("connect timeout after {}s", self.config.connect_timeout))),
        }
    }

    /// Opens and closes a session to see whether the server answers (learning its role on the
    /// way); bans or re-admits the endpoint accordingly.
    pub async fn probe(self: &Arc<Self>) -> bool {
        match self.connect_with(&self.probe_pg, TargetSessionAttrs::Any, false).await {
            Ok(client) => {
                drop(client);
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
    pub async fn check_session(&self, client: &Client, limit: Duration) -> Check {
        let work = async {
            if self.role_needed {
                role::query_role(client).await.map(|r| self.set_role(r))
            } else {
                client.simple_query("").await.map(|_| ())
            }
        };
        match tokio::time::timeout(limit, work).await {
            Ok(Ok(())) => Check::Alive,
            Ok(Err(_)) => Check::Dead,
            Err(_) => {
                if limit >= self.connect_timeout() {
                    self.record_failure(&format!("health check timeout: no answer within {}s", self.config.connect_timeout));
                }
                Check::Silent
            }
        }
    }

    /// Asks the server to cancel the statement running on a session. Cancel requests go in
    /// plain TCP (servers that allow non-TLS connections accept them); a failed cancel is
    /// harmless.
    pub async fn cancel(&self, token: tokio_postgres::CancelToken) {
        let _ = token.cancel_query(NoTls).await;
    }

    async fn open(self: &Arc<Self>, pg: &tokio_postgres::Config) -> Result<(Client, Option<Role>), tokio_postgres::Error> {
        match &self.tls {
            None => {
                let (client, connection) = pg.connect(NoTls).await?;
                Ok((client, self.drive(connection)))
            }
            Some(tls) => {
                let (client, connection) = pg.connect(tls.clone()).await?;
                Ok((client, self.drive(connection)))
            }
        }
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

fn tls_config(mode: SslMode, ca_pem: Option<&str>) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match mode {
        SslMode::Prefer | SslMode::Require | SslMode::Disable => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
        SslMode::VerifyCa => {
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider)
                .build()
                .map_err(|e| e.to_string())?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                .with_no_client_auth()
        }
        SslMode::VerifyFull => builder.with_root_certificates(roots(ca_pem)?).with_no_client_auth(),
    };
    Ok(config)
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

/// `prefer` / `require`: encrypted, but any certificate is accepted (libpq's meaning).
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
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
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
