//! What a group counts and reports: why sessions were closed, its counters, and the
//! `stats()` snapshot of a group and its endpoints.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

use super::group::Group;

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DisconnectReason {
    /// Idle longer than `idle_timeout`, above `min_idle`.
    IdleTimeout,
    /// Older than `max_lifetime`.
    MaxLifetime,
    /// Checked out `max_uses` times.
    MaxUses,
    /// The socket was found closed, or the server stopped answering.
    Broken,
    /// The server's role no longer fits the group.
    WrongRole,
    /// Capacity moved to another endpoint (one that came back, or away from a banned one).
    Rebalance,
    /// The pool was closed.
    Closed,
    /// A statement failed in a way that leaves the session unusable.
    Error,
}

impl DisconnectReason {
    const ALL: [Self; 8] =
        [Self::IdleTimeout, Self::MaxLifetime, Self::MaxUses, Self::Broken, Self::WrongRole, Self::Rebalance, Self::Closed, Self::Error];

    /// The name used in stats and events.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::IdleTimeout => "idle_timeout",
            Self::MaxLifetime => "max_lifetime",
            Self::MaxUses => "max_uses",
            Self::Broken => "broken",
            Self::WrongRole => "wrong_role",
            Self::Rebalance => "rebalance",
            Self::Closed => "closed",
            Self::Error => "error",
        }
    }
}

/// Process-wide counters of one group.
#[derive(Default, Debug)]
pub(crate) struct Counters {
    acquires: AtomicU64,
    waits: AtomicU64,
    timeouts: AtomicU64,
    connects: AtomicU64,
    connect_errors: AtomicU64,
    disconnects: [AtomicU64; DisconnectReason::ALL.len()],
    query_errors: AtomicU64,
    retries: AtomicU64,
    resets: AtomicU64,
    release_rollbacks: AtomicU64,
}

/// Whose checkout this is, as the group's wait and timeout counters see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asker {
    /// A checkout of the core's own (a one-shot statement, a retry): its waits and timeouts are
    /// the group's.
    Core,
    /// An acquire request made on behalf of handler checkouts that wait in the JavaScript of
    /// the pool object with this number. Those count their own waits and timeouts, so the
    /// request is not counted again, nor shown as waiting to that object; `stats()` in JS adds
    /// its own figures to the core's. (Another thread's pool object sees it waiting.)
    Relay(u64),
}

impl Asker {
    /// The pool object a relayed request waits for.
    pub(super) fn relayed_for(self) -> Option<u64> {
        match self {
            Asker::Core => None,
            Asker::Relay(caller) => Some(caller),
        }
    }
}

impl Counters {
    /// A checkout got a connection.
    pub(super) fn acquired(&self) {
        bump(&self.acquires);
    }

    /// A checkout starts waiting.
    pub(super) fn waited(&self, asker: Asker) {
        if asker == Asker::Core {
            bump(&self.waits);
        }
    }

    /// A checkout gives up (acquire_timeout or max_waiting).
    pub(super) fn timed_out(&self, asker: Asker) {
        if asker == Asker::Core {
            bump(&self.timeouts);
        }
    }

    /// A session was opened.
    pub(super) fn connected(&self) {
        bump(&self.connects);
    }

    /// Opening a session failed.
    pub(super) fn connect_failed(&self) {
        bump(&self.connect_errors);
    }

    /// A session was closed.
    pub(super) fn disconnected(&self, reason: DisconnectReason) {
        bump(&self.disconnects[reason as usize]);
    }

    /// A statement failed.
    pub(super) fn query_failed(&self) {
        bump(&self.query_errors);
    }

    /// A statement that was never sent runs again on another connection.
    pub(super) fn retried(&self) {
        bump(&self.retries);
    }

    /// A session is reset for its next user.
    pub(super) fn reset(&self) {
        bump(&self.resets);
    }

    /// A session came back inside a transaction and is rolled back.
    pub(super) fn rolled_back_at_release(&self) {
        bump(&self.release_rollbacks);
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Gauges and counters of one endpoint within a group.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EndpointStats {
    id: String,
    host: String,
    port: u16,
    size: usize,
    idle: usize,
    in_use: usize,
    opening: usize,
    banned: bool,
    wrong_role: bool,
    role: Option<&'static str>,
    read_only: Option<bool>,
    failures: u32,
    last_error: Option<String>,
}

/// Gauges and counters of one group.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GroupStats {
    name: String,
    max: usize,
    size: usize,
    idle: usize,
    in_use: usize,
    opening: usize,
    waiting: usize,
    acquires: u64,
    waits: u64,
    timeouts: u64,
    connects: u64,
    connect_errors: u64,
    disconnects: u64,
    disconnects_by_reason: BTreeMap<&'static str, u64>,
    query_errors: u64,
    retries: u64,
    resets: u64,
    release_rollbacks: u64,
    endpoints: Vec<EndpointStats>,
}

impl Group {
    /// The group's figures as pool object `caller` reports them (its relayed requests are not
    /// its waiting checkouts: those it counts itself); `None` for the core's own view.
    pub(super) fn stats(&self, caller: Option<u64>) -> GroupStats {
        let now = Instant::now();
        let state = self.state.lock();
        let endpoints = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, ep)| {
                let health = ep.health.lock();
                let role = ep.role();
                EndpointStats {
                    id: ep.config.id.clone(),
                    host: ep.config.host.clone(),
                    port: ep.config.port,
                    size: state.slots.at(i).size(),
                    // A connection the monitor is checking is idle as far as users care.
                    idle: state.slots.at(i).idle.len() + state.slots.at(i).checking,
                    in_use: state.slots.at(i).in_use,
                    opening: state.slots.at(i).opening,
                    banned: health.banned_until.is_some_and(|t| t > now),
                    wrong_role: !self.eligible(i),
                    role: role.map(|r| r.name()),
                    read_only: role.map(|r| r.read_only),
                    failures: health.failures,
                    last_error: health.last_error.clone(),
                }
            })
            .collect::<Vec<_>>();
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let by_reason: Vec<(&'static str, u64)> =
            DisconnectReason::ALL.iter().map(|r| (r.as_str(), load(&c.disconnects[*r as usize]))).collect();
        GroupStats {
            name: self.config.name.clone(),
            max: self.config.connection_count,
            size: state.slots.total(),
            idle: state.slots.all().iter().map(|s| s.idle.len() + s.checking).sum(),
            in_use: state.slots.all().iter().map(|s| s.in_use).sum(),
            opening: state.slots.all().iter().map(|s| s.opening).sum(),
            waiting: state.slots.waiting() - caller.map_or(0, |c| state.slots.relayed_waiting(c))
                + self.slot_waiting.load(Ordering::Relaxed),
            acquires: load(&c.acquires),
            waits: load(&c.waits),
            timeouts: load(&c.timeouts),
            connects: load(&c.connects),
            connect_errors: load(&c.connect_errors),
            disconnects: by_reason.iter().map(|(_, n)| n).sum(),
            disconnects_by_reason: by_reason.into_iter().collect(),
            query_errors: load(&c.query_errors),
            retries: load(&c.retries),
            resets: load(&c.resets),
            release_rollbacks: load(&c.release_rollbacks),
            endpoints,
        }
    }
}
