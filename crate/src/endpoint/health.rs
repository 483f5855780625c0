//! An endpoint's health: bans with backoff after failures, probes that re-admit it, and
//! checks of open sessions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::{ConnectError, Endpoint};
use crate::config::TargetSessionAttrs;
use crate::events::EventKind;
use crate::role;

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

const BAN_BASE: Duration = Duration::from_millis(200);
// Short enough that a node that comes back gets traffic again within a few seconds; a probe
// of a node that is down costs one refused connect.
const BAN_MAX: Duration = Duration::from_secs(2);
/// Least time between two connects to a banned endpoint made because every endpoint of a group
/// was banned (see [`Endpoint::claim_forced_attempt`]).
const FORCED_GAP: Duration = BAN_BASE;

impl Endpoint {
    /// Whether new connections should avoid this endpoint now.
    pub(crate) fn is_banned(&self, now: Instant) -> bool {
        self.health.lock().banned_until.is_some_and(|until| until > now)
    }

    /// Claims a connect attempt on this banned endpoint for a checkout that found every endpoint
    /// of its group banned ("trying beats failing blind"). One such attempt per `FORCED_GAP`,
    /// whoever asks: without the limit each checkout would make its own attempt, and with the
    /// only server down a crowd of callers would turn into thousands of refused connects a
    /// second (the pool spinning while its server restarts). Checkouts that get no attempt fail at once
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
}
