//! A group's sessions over their life outside a checkout: opening them, the health monitor
//! of the pool's endpoints, and the periodic upkeep (closing expired or long-idle sessions,
//! `min_idle`, moving capacity between endpoints).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::group::{Group, GroupState, Retired, Return};
use super::metrics::{Asker, DisconnectReason};
use super::Pool;
use crate::config::TargetSessionAttrs;
use crate::conn::PgConn;
use crate::endpoint::{Answer, ConnectError, Endpoint};
use crate::error::PoolError;
use crate::events::EventKind;

impl Group {
    /// A reserved open failed or was abandoned: free its capacity.
    fn open_failed(&self, e: usize) {
        self.state.lock().slots.open_failed(e);
        self.returned.notify_waiters();
    }

    /// Opens a connection on endpoint `e` for which capacity was reserved.
    pub(super) async fn open(self: &Arc<Self>, e: usize) -> Result<PgConn, (usize, String)> {
        let endpoint = &self.endpoints[e];
        match endpoint.connect(self.config.target_session_attrs, self.config.sqlprepare).await {
            Ok(opened) => {
                endpoint.record_success();
                self.counters.connected();
                let conn = PgConn::new(opened, e, self.config.statement_cache_size, self.config.max_lifetime);
                if !self.state.lock().slots.opened(e) {
                    // `close` waits for this open to end: without the wake-up it would sleep
                    // until its timeout (5 s by default) whenever a connect is in flight.
                    self.returned.notify_waiters();
                    return Err((e, "pool closed while connecting".into()));
                }
                self.record(EventKind::Connect, e, None);
                Ok(conn)
            }
            Err(err) => {
                self.counters.connect_failed();
                let text = match err {
                    ConnectError::Unreachable(text) => {
                        endpoint.record_failure(&text);
                        self.record(EventKind::Error, e, Some(text.clone()));
                        text
                    }
                    // The endpoint recorded its role; the chooser now skips it for this group.
                    ConnectError::WrongRole(text) => text,
                };
                self.open_failed(e);
                Err((e, format!("{}: {}", endpoint.label(), text)))
            }
        }
    }

    /// Opens a connection for the pool (a replacement, `min_idle`, rebalancing); capacity must
    /// be reserved on `e` already.
    pub(super) fn open_in_background(self: &Arc<Self>, e: usize) {
        let group = self.clone();
        crate::rt::spawn(async move {
            if let Ok(conn) = group.open(e).await {
                group.check_in(conn, Return::Reuse);
            }
        });
    }

    /// [`Group::open`] bounded by a checkout's deadline. The attempt runs on by itself past the
    /// deadline, so its capacity is accounted for either way, and a late connection is pooled.
    pub(super) async fn open_until(
        self: &Arc<Self>,
        e: usize,
        deadline: tokio::time::Instant,
        asker: Asker,
    ) -> Result<Result<PgConn, (usize, String)>, PoolError> {
        let (tx, rx) = oneshot::channel();
        let group = self.clone();
        crate::rt::spawn(async move {
            let result = group.open(e).await;
            if let Err(Ok(conn)) = tx.send(result) {
                group.check_in(conn, Return::Reuse);
            }
        });
        let mut opening = Opening { group: self, rx };
        match tokio::time::timeout_at(deadline, &mut opening.rx).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(PoolError::Connection(format!("{}: connect attempt aborted", self.endpoints[e].label()))),
            Err(_) => Err(self.timeout_error_for(asker, &format!("connecting to {} took longer", self.endpoints[e].label()))),
        }
    }

    /// Background upkeep: close dead, expired, wrong-role and long-idle connections, honour
    /// `min_idle`, and move capacity towards endpoints that are under their share.
    fn maintain(self: &Arc<Self>) {
        let now = Instant::now();
        let mut retired = Retired::new();
        let mut to_open = Vec::new();
        {
            let mut state = self.state.lock();
            if state.slots.is_closed() {
                return;
            }
            let idle_timeout = Duration::from_millis(self.config.idle_timeout);
            let min_idle = self.config.min_idle;
            retired.extend(state.slots.retire_idle(|_, conn, left| {
                let idle_too_long = self.config.idle_timeout > 0 && now.duration_since(conn.last_used) >= idle_timeout;
                self.unfit(conn, now).or_else(|| (idle_too_long && left > min_idle).then_some(DisconnectReason::IdleTimeout))
            }));
            // Refill up to min_idle.
            while state.slots.total() < min_idle.min(self.config.connection_count) && state.slots.waiting() == 0 {
                let Some(e) = self.choose(&state, now, &[]).and_then(|e| self.open_target(e, now, &[])) else { break };
                state.slots.reserve_open(e);
                to_open.push(e);
            }
            // Rebalance: one move per round from an over-share endpoint with idle connections
            // to a healthy under-share one (e.g. an endpoint that came back after an outage).
            if to_open.is_empty() && !state.slots.can_grow() {
                if let Some((from, to)) = self.rebalance_move(&state, now) {
                    if let Some(conn) = state.slots.move_idle(from, to) {
                        retired.push((conn, DisconnectReason::Rebalance));
                        to_open.push(to);
                    }
                }
            }
        }
        self.retire(retired);
        for e in to_open {
            self.open_in_background(e);
        }
    }

    fn rebalance_move(&self, state: &GroupState, now: Instant) -> Option<(usize, usize)> {
        let healthy = |i: &usize| !self.endpoints[*i].is_banned(now) && self.eligible(*i);
        let mut usable: Vec<usize> = (0..self.endpoints.len()).filter(healthy).collect();
        if self.config.target_session_attrs == TargetSessionAttrs::PreferStandby {
            let standbys: Vec<usize> = usable.iter().copied().filter(|&i| self.endpoints[i].role().is_some_and(|r| r.standby)).collect();
            if !standbys.is_empty() {
                usable = standbys;
            }
        }
        if usable.is_empty() {
            return None;
        }
        let weight_sum: u64 = usable.iter().map(|&i| u64::from(self.endpoints[i].config.weight.max(1))).sum();
        let share = |i: usize| self.config.connection_count as f64 * f64::from(self.endpoints[i].config.weight.max(1)) / weight_sum as f64;
        let size = |i: usize| state.slots.at(i).size() as f64;
        let load = |i: usize| size(i) / f64::from(self.endpoints[i].config.weight.max(1));
        let has_idle = |i: &usize| !state.slots.at(*i).idle.is_empty();
        // Idle capacity on an endpoint the group should not use moves first, to the least loaded
        // usable one; between usable endpoints only a move that cannot bounce back is made.
        if let Some(from) = (0..self.endpoints.len()).filter(|i| !usable.contains(i)).find(has_idle) {
            let to = usable.iter().copied().filter(|&i| size(i) < share(i).ceil()).min_by(|&a, &b| load(a).total_cmp(&load(b)))?;
            return Some((from, to));
        }
        let to = usable.iter().copied().find(|&i| size(i) < share(i).floor())?;
        let from = usable.iter().copied().filter(has_idle).find(|&i| i != to && size(i) > share(i).ceil())?;
        Some((from, to))
    }

    /// Lends the health monitor the longest-idle connection on `endpoint`, if any.
    fn borrow_idle(&self, endpoint: &Arc<Endpoint>) -> Option<PgConn> {
        let e = self.endpoints.iter().position(|ep| Arc::ptr_eq(ep, endpoint))?;
        self.state.lock().slots.borrow_oldest(e)
    }

    /// Whether this group uses `endpoint` but its known role keeps the group away from it.
    fn rejects(&self, endpoint: &Arc<Endpoint>) -> bool {
        self.endpoints.iter().any(|ep| Arc::ptr_eq(ep, endpoint)) && !endpoint.allows(self.config.target_session_attrs)
    }
}

/// Every `health_interval`: probes banned endpoints (re-admitting those that answer), checks
/// each other endpoint through one of its idle sessions (role and liveness; silence bans it),
/// probes endpoints whose role keeps a group away (to follow a promotion), and runs group
/// upkeep. Ends when the pool is gone or closed.
pub(super) async fn monitor(pool: Weak<Pool>) {
    loop {
        let interval = match pool.upgrade() {
            Some(p) if !p.is_closed() => p.health_interval,
            _ => return,
        };
        tokio::time::sleep(interval).await;
        let Some(pool) = pool.upgrade() else { return };
        if pool.is_closed() {
            return;
        }
        let now = Instant::now();
        for endpoint in &pool.endpoints {
            let (failing, probe_due) = {
                let mut health = endpoint.health.lock();
                let due = health.failures > 0 && health.banned_until.is_none_or(|t| t <= now);
                if due {
                    // Stay banned while the probe runs, so rounds do not stack probes.
                    health.banned_until = Some(now + endpoint.connect_timeout());
                }
                (health.failures > 0, due)
            };
            if probe_due {
                let endpoint = endpoint.clone();
                crate::rt::spawn(async move {
                    endpoint.probe().await;
                });
            } else if !failing && endpoint.begin_check() {
                crate::rt::spawn(check_endpoint(endpoint.clone(), pool.groups.clone()));
            }
        }
        for group in &pool.groups {
            group.maintain();
        }
    }
}

/// One health/role check of a healthy endpoint (see [`monitor`]).
async fn check_endpoint(endpoint: Arc<Endpoint>, groups: Vec<Arc<Group>>) {
    let borrowed = groups.iter().find_map(|g| g.borrow_idle(&endpoint).map(|conn| (g.clone(), conn)));
    match borrowed {
        Some((group, conn)) => {
            let how = match endpoint.check_session(&conn.client, endpoint.connect_timeout()).await {
                Answer::Alive => Return::Checked,
                Answer::Dead | Answer::Silent => Return::Discard(DisconnectReason::Broken),
            };
            group.give_back(conn, how, true, None);
        }
        None => {
            if groups.iter().any(|g| g.rejects(&endpoint)) {
                endpoint.probe().await;
            }
        }
    }
    endpoint.end_check();
}

/// The receiving end of a connect that runs on in the background. A checkout that gives up
/// while its session arrives (its deadline passed, or its statement was aborted, just then)
/// pools the session: dropped with the channel, it would be lost with its unit still counted
/// as in use.
struct Opening<'a> {
    group: &'a Arc<Group>,
    rx: oneshot::Receiver<Result<PgConn, (usize, String)>>,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        // Closed first: a session that arrives later comes back to the connecting task, which
        // checks it in itself.
        self.rx.close();
        if let Ok(Ok(conn)) = self.rx.try_recv() {
            self.group.check_in(conn, Return::Reuse);
        }
    }
}
