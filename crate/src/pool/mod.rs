//! The pool: groups of connections over endpoints shared between them.
//!
//! Layout: `group.rs` decides each checkout (an idle session, a new one or a place in the FIFO)
//! and takes sessions back; `slots.rs` is the group's capacity as a state machine;
//! `crate::balancer` picks the endpoint a checkout tries; `lease.rs` is a checked-out session and
//! `pipe.rs` orders pipelined statements; `upkeep.rs` opens sessions and runs the monitor and the
//! upkeep; `metrics.rs` counts. This file builds the pool, warms it up and closes it.
//!
//! Roles are a property of the endpoint (see `role.rs`): a group uses an endpoint whose known
//! role fits its `target_session_attrs`, never hands out a connection on one that does not,
//! and takes it back once the monitor sees its role fit again (a promoted standby).

mod group;
mod lease;
mod metrics;
mod pipe;
pub(crate) mod slots;
mod upkeep;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub(crate) use group::Group;
pub(crate) use lease::{Canceller, Lease};
pub(crate) use pipe::Pipe;

use crate::config::{PoolConfig, TargetSessionAttrs};
use crate::endpoint::{CancelTarget, Endpoint};
use crate::error::PoolError;
use crate::events::Events;
use group::Return;
use metrics::{DisconnectReason, GroupStats};
use upkeep::monitor;

/// The whole pool: endpoints shared by groups.
pub(crate) struct Pool {
    /// Groups, in configuration order.
    pub(crate) groups: Vec<Arc<Group>>,
    endpoints: Vec<Arc<Endpoint>>,
    health_interval: Duration,
    closed: AtomicBool,
    /// JS pool objects attached to this pool (several with `threaded`).
    pub(crate) users: AtomicUsize,
    events: Arc<Events>,
}

impl Pool {
    /// Builds the pool (no I/O) and starts its health monitor.
    pub(crate) fn new(config: PoolConfig) -> Result<Arc<Self>, String> {
        let events = Arc::new(Events::default());
        let endpoints = config
            .endpoints
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let role_needed =
                    config.groups.iter().any(|g| g.target_session_attrs != TargetSessionAttrs::Any && g.endpoints.contains(&i));
                Endpoint::new(c, role_needed, events.clone()).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let groups = config
            .groups
            .into_iter()
            .map(|g| {
                let eps = g.endpoints.iter().map(|&i| endpoints[i].clone()).collect();
                Arc::new(Group::new(g, eps, events.clone()))
            })
            .collect();
        let pool = Arc::new(Self {
            groups,
            endpoints,
            health_interval: Duration::from_millis(config.health_interval.max(10)),
            closed: AtomicBool::new(false),
            users: AtomicUsize::new(0),
            events,
        });
        crate::rt::spawn(monitor(Arc::downgrade(&pool)));
        Ok(pool)
    }

    /// The pool's lifecycle events, for the bindings to drain.
    pub(crate) fn events(&self) -> &Arc<Events> {
        &self.events
    }

    /// Opens the first connections; fails if some group cannot reach any endpoint.
    pub(crate) async fn warm_up(&self) -> Result<(), PoolError> {
        let results = futures_util::future::join_all(self.groups.iter().map(|g| g.warm_up())).await;
        let mut causes = Vec::new();
        for (group, result) in self.groups.iter().zip(results) {
            if let Err(PoolError::Offline(c)) = result {
                causes.push(format!("group '{}': {}", group.config.name, c.join(", ")));
            }
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(PoolError::Offline(causes))
        }
    }

    /// Stops new work, waits for leases to come back, then revokes what is left.
    pub(crate) async fn close(&self, timeout: Duration) {
        self.closed.store(true, Ordering::Relaxed);
        for group in &self.groups {
            group.close();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        for group in &self.groups {
            loop {
                let notified = group.returned.notified();
                if group.outstanding() == 0 {
                    break;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    group.revoked.store(true, Ordering::Relaxed);
                    group.cancel_leased();
                    break;
                }
            }
        }
    }

    /// Whether `close` was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// JSON snapshot of every group, as pool object `caller` reports it (see `Group::stats`).
    pub(crate) fn stats_json(&self, caller: Option<u64>) -> String {
        let groups: Vec<GroupStats> = self.groups.iter().map(|g| g.stats(caller)).collect();
        serde_json::to_string(&groups).unwrap_or_else(|_| "[]".into())
    }
}

impl Group {
    /// Opens one connection per endpoint so that `init` can report unreachable endpoints.
    async fn warm_up(self: &Arc<Self>) -> Result<(), PoolError> {
        if self.state.lock().slots.total() > 0 {
            // Joined an already running (shared) pool.
            return Ok(());
        }
        let want = self.endpoints.len().min(self.config.connection_count).max(self.config.min_idle.min(self.config.connection_count));
        let mut reserved = Vec::new();
        {
            let mut state = self.state.lock();
            for k in 0..want {
                let e = k % self.endpoints.len();
                if !state.slots.reserve_open(e) {
                    break;
                }
                reserved.push(e);
            }
        }
        let attempts = reserved.into_iter().map(|e| {
            let group = self.clone();
            async move {
                match group.open(e).await {
                    Ok(conn) => {
                        group.check_in(conn, Return::Reuse);
                        Ok(())
                    }
                    Err((_, cause)) => Err(cause),
                }
            }
        });
        let results = futures_util::future::join_all(attempts).await;
        if results.iter().any(|r| r.is_ok()) {
            return Ok(());
        }
        let causes: Vec<String> = results.into_iter().filter_map(|r| r.err()).collect();
        Err(PoolError::Offline(causes))
    }

    /// Answers every waiter with `Closed` and closes the idle sessions.
    fn close(&self) {
        let idle = self.state.lock().slots.close();
        self.retire(idle.into_iter().map(|c| (c, DisconnectReason::Closed)).collect());
    }

    /// Sessions still checked out or being opened.
    fn outstanding(&self) -> usize {
        let state = self.state.lock();
        state.slots.all().iter().map(|s| s.in_use + s.opening).sum()
    }

    /// Sends a cancel request for whatever runs on every session still checked out.
    fn cancel_leased(&self) {
        let leased: Vec<(usize, Arc<CancelTarget>)> = self.state.lock().leased.values().cloned().collect();
        for (e, token) in leased {
            let endpoint = self.endpoints[e].clone();
            crate::rt::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.cancel(&token)).await;
            });
        }
    }
}
