//! The normalized configuration the TypeScript layer hands over.
//!
//! Validation with user-facing key paths happens in TypeScript (`lib/config.ts`); this side
//! only deserializes the already-checked, fully-defaulted shape and rejects anything else.

use serde::Deserialize;

/// TLS mode of an endpoint, with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, without certificate checks.
    Prefer,
    /// TLS required; without `ssl_ca` no certificate check, with it the chain is checked as
    /// in `verify-ca` (libpq does the same when a root certificate is given).
    Require,
    /// TLS required, the chain checked against the CA; the host name is not checked.
    VerifyCa,
    /// TLS required, chain and host name checked.
    VerifyFull,
}

impl SslMode {
    /// The mode's name as configured.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// SCRAM channel binding (`tls-server-end-point`), with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ChannelBinding {
    /// Never bind.
    Disable,
    /// Bind when TLS and SCRAM allow it.
    Prefer,
    /// Fail unless the session is bound (TLS with SCRAM authentication).
    Require,
}

/// Which kind of server a group may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum TargetSessionAttrs {
    /// Any reachable server.
    Any,
    /// A server that accepts writes.
    ReadWrite,
    /// A server in read-only mode.
    ReadOnly,
    /// The primary (not in recovery).
    Primary,
    /// A standby (in recovery).
    Standby,
    /// A standby when one is healthy, else the primary.
    PreferStandby,
}

impl TargetSessionAttrs {
    /// The configuration spelling, for messages.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::ReadWrite => "read-write",
            Self::ReadOnly => "read-only",
            Self::Primary => "primary",
            Self::Standby => "standby",
            Self::PreferStandby => "prefer-standby",
        }
    }
}

/// How a group picks the endpoint for a new checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Balance {
    /// Weighted rotation.
    RoundRobin,
    /// The endpoint with the fewest connections in use.
    LeastBusy,
    /// Weighted random choice.
    Random,
}

/// One PostgreSQL server. Its `Debug` leaves out the password and the client key.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EndpointConfig {
    /// Name groups use to refer to this endpoint.
    pub(crate) id: String,
    /// Host name or IP address.
    pub(crate) host: String,
    /// TCP port.
    pub(crate) port: u16,
    /// Database name.
    pub(crate) name: String,
    /// Role to log in as.
    pub(crate) user: String,
    /// Password, if any.
    pub(crate) pass: Option<String>,
    /// TLS mode.
    pub(crate) ssl: SslMode,
    /// PEM text of the CA bundle for `verify-ca` / `verify-full` (the public webpki roots
    /// when absent); with `require`, makes it check the chain like `verify-ca`.
    pub(crate) ssl_ca: Option<String>,
    /// SCRAM channel binding.
    pub(crate) channel_binding: ChannelBinding,
    /// PEM text of a client certificate (chain) presented to the server.
    pub(crate) ssl_cert: Option<String>,
    /// PEM text of the client certificate's private key.
    pub(crate) ssl_key: Option<String>,
    /// Seconds allowed for TCP connect, TLS and startup together.
    pub(crate) connect_timeout: f64,
    /// Milliseconds, sent as the session's `statement_timeout` (0 disables).
    pub(crate) query_timeout: u64,
    /// Megabytes, sent as the session's `temp_buffers`.
    pub(crate) session_tmp_buffer: u64,
    /// `application_name` reported to the server.
    pub(crate) application_name: String,
    /// Relative share of new connections.
    pub(crate) weight: u32,
    /// More startup `options` (libpq's `options`, e.g. `-c search_path=app`), after the pool's own.
    #[serde(default)]
    pub(crate) options: String,
}

impl std::fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("id", &self.id)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("name", &self.name)
            .field("user", &self.user)
            .field("pass", &self.pass.as_ref().map(|_| "<redacted>"))
            .field("ssl", &self.ssl)
            .field("ssl_ca", &self.ssl_ca.is_some())
            .field("ssl_cert", &self.ssl_cert.is_some())
            .field("ssl_key", &self.ssl_key.as_ref().map(|_| "<redacted>"))
            .field("channel_binding", &self.channel_binding)
            .field("connect_timeout", &self.connect_timeout)
            .field("query_timeout", &self.query_timeout)
            .field("session_tmp_buffer", &self.session_tmp_buffer)
            .field("application_name", &self.application_name)
            .field("weight", &self.weight)
            .finish()
    }
}

/// One group of connections with its own size and behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupConfig {
    /// Group name, as used by `new Handler(name)`.
    pub(crate) name: String,
    /// Upper bound on the group's open connections, over all its endpoints.
    pub(crate) connection_count: usize,
    /// When false, the first statement of a handler opens a transaction.
    pub(crate) autocommit: bool,
    /// Run `"SQLPrepare"."PrepareQueries"()` on each new connection.
    pub(crate) sqlprepare: bool,
    /// Indexes into the pool's endpoint list.
    pub(crate) endpoints: Vec<usize>,
    /// Server role this group accepts.
    pub(crate) target_session_attrs: TargetSessionAttrs,
    /// Balancing strategy.
    pub(crate) balance: Balance,
    /// Milliseconds a checkout may wait for a connection.
    pub(crate) acquire_timeout: u64,
    /// Waiters allowed in the queue before checkouts fail fast.
    pub(crate) max_waiting: usize,
    /// Connections kept open even when idle.
    pub(crate) min_idle: usize,
    /// Milliseconds after which an idle connection above `min_idle` is closed (0: never).
    pub(crate) idle_timeout: u64,
    /// Milliseconds after which a connection is replaced (0: never).
    pub(crate) max_lifetime: u64,
    /// Checkouts after which a connection is replaced (0: unlimited).
    pub(crate) max_uses: u64,
    /// Milliseconds of idleness after which a connection is pinged before hand-out.
    pub(crate) ping_after_idle: u64,
    /// Prepared statements cached per connection (0: no named statements).
    pub(crate) statement_cache_size: usize,
    /// How many one-shot statements may be in flight on one connection once every connection
    /// is busy (1 turns pipelining off).
    pub(crate) pipeline: usize,
    /// Undo what a user changed on a session (settings, role, temp tables, locks, LISTEN,
    /// cursors, prepared statements) before the next user gets it.
    pub(crate) reset_on_release: bool,
}

/// The whole pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PoolConfig {
    /// All endpoints, in configuration order.
    pub(crate) endpoints: Vec<EndpointConfig>,
    /// All groups, in configuration order.
    pub(crate) groups: Vec<GroupConfig>,
    /// Milliseconds between health-monitor rounds.
    pub(crate) health_interval: u64,
}

impl PoolConfig {
    /// Parses the JSON the TypeScript layer produced, and checks every number against the
    /// range `lib/config.ts` documents: a value out of range must be an error here, never a
    /// panic later (a `Duration` that cannot hold it, an allocation that cannot be made).
    pub(crate) fn from_json(json: &str) -> Result<Self, String> {
        let config: Self = serde_json::from_str(json).map_err(|e| e.to_string())?;
        for (i, e) in config.endpoints.iter().enumerate() {
            let at = |key: &str| format!("endpoints[{i}].{key}");
            if !(e.connect_timeout.is_finite() && e.connect_timeout > 0.0 && e.connect_timeout <= MAX_CONNECT_TIMEOUT_S) {
                return Err(format!("{} must be a number of seconds > 0 and <= {MAX_CONNECT_TIMEOUT_S}", at("connect_timeout")));
            }
            within(&at("port"), u64::from(e.port), 1, 65535)?;
            within(&at("query_timeout"), e.query_timeout, 0, MAX_MS)?;
            within(&at("session_tmp_buffer"), e.session_tmp_buffer, 1, 8_388_607)?;
            within(&at("weight"), u64::from(e.weight), 1, 1_000_000)?;
            if e.ssl == SslMode::VerifyCa && e.ssl_ca.is_none() {
                return Err(format!("{} is required with ssl 'verify-ca'", at("ssl_ca")));
            }
        }
        for group in &config.groups {
            let at = |key: &str| format!("groups.{}.{key}", group.name);
            within(&at("connection_count"), group.connection_count as u64, 1, 100_000)?;
            within(&at("acquire_timeout"), group.acquire_timeout, 1, MAX_MS)?;
            within(&at("max_waiting"), group.max_waiting as u64, 0, MAX_MS)?;
            within(&at("min_idle"), group.min_idle as u64, 0, group.connection_count as u64)?;
            within(&at("idle_timeout"), group.idle_timeout, 0, MAX_MS)?;
            within(&at("max_lifetime"), group.max_lifetime, 0, MAX_MS)?;
            within(&at("max_uses"), group.max_uses, 0, (1 << 53) - 1)?;
            within(&at("ping_after_idle"), group.ping_after_idle, 0, MAX_MS)?;
            within(&at("statement_cache_size"), group.statement_cache_size as u64, 0, 10_000)?;
            within(&at("pipeline"), group.pipeline as u64, 1, 1000)?;
            if group.endpoints.is_empty() || group.endpoints.iter().any(|&i| i >= config.endpoints.len()) {
                return Err(format!("groups.{}.endpoints names a missing endpoint", group.name));
            }
        }
        within("health_interval", config.health_interval, 10, MAX_MS)?;
        Ok(config)
    }
}

/// The largest time in milliseconds any key takes (what a JS timer can wait: about 24.8 days).
const MAX_MS: u64 = i32::MAX as u64;
/// The largest `connect_timeout`, in seconds (`MAX_MS` as seconds).
const MAX_CONNECT_TIMEOUT_S: f64 = 2_147_483.0;

fn within(key: &str, value: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!("{key} must be from {min} to {max} (got {value})"))
    }
}
