//! One PostgreSQL server, as every group that uses it sees it: its connection settings, its
//! health and its role.
//!
//! Layout: `connect.rs` opens a session (socket, TLS, startup, role check); `tls.rs` builds the
//! TLS configuration and certificate checks; `health.rs` bans and re-admits the endpoint and
//! checks sessions; `cancel.rs` sends cancel requests.

mod cancel;
mod connect;
mod health;
mod tls;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio_postgres::config::{ChannelBinding as PgChannelBinding, SslMode as PgSslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

pub(crate) use cancel::CancelTarget;
pub(crate) use connect::{ConnectError, Opened};
pub(crate) use health::{Answer, Health};

use crate::config::{ChannelBinding, EndpointConfig, SslMode, TargetSessionAttrs};
use crate::events::{EventKind, Events};
use crate::role::{Role, RoleCell};
use tls::tls_config;

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
}
