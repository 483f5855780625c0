//! A group of connections and its checkout and release: the plan for one checkout (an idle
//! session, a new one, or a place in the FIFO), the wait, the ping of a long-idle session, and
//! the way a session comes back (to the first waiter, to the idle list, or closed).
//!
//! Capacity (`connection_count`) is counted over all of the group's endpoints — idle, in use,
//! being opened or being health-checked — so the server never sees more than the configured
//! number of sessions for a group, whichever endpoints they are on; `slots.rs` keeps that count.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use super::lease::{Lease, Returning};
use super::metrics::{Asker, Counters, DisconnectReason};
use super::slots::{self, Holder, Slots};
use crate::balancer::GroupEndpoints;
use crate::config::GroupConfig;
use crate::conn::PgConn;
use crate::endpoint::{Answer, CancelTarget, Endpoint};
use crate::error::PoolError;
use crate::events::{EventKind, Events};

type Grant = slots::Grant<PgConn>;

/// What the group's lock guards.
pub(super) struct GroupState {
    /// Capacity and idle sessions; changed only through its transitions.
    pub(super) slots: Slots<PgConn>,
    /// Sessions lent to users, so that `close` can cancel what runs on them.
    pub(super) leased: HashMap<u64, (usize, Arc<CancelTarget>), BuildHasherDefault<IdHasher>>,
}

/// What one checkout does next, decided under the lock by [`Group::plan`].
enum Plan {
    /// Use this idle session.
    Ready(PgConn),
    /// Open a session on this endpoint (its capacity is reserved).
    Open(usize),
    /// Wait in the FIFO under this id.
    Wait(u64, oneshot::Receiver<Grant>),
    /// No endpoint is left that could serve the group (wrong role, or failed just now).
    NoEndpoint,
    /// Every endpoint is banned, was tried moments ago, and has no idle connection left.
    Offline,
}

/// How a connection comes back to the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Return {
    /// From a user, reusable.
    Reuse,
    /// From a health check that it passed.
    Checked,
    /// To be closed.
    Discard(DisconnectReason),
}

/// Connections being closed, with why; they are counted and dropped outside the state lock.
pub(super) type Retired = Vec<(PgConn, DisconnectReason)>;

/// Hashes lease ids (a counter) with one multiplication: the default SipHash cost more than
/// the rest of a checkout's bookkeeping.
#[derive(Default)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A group of connections.
///
/// Its methods (about 700 lines) are spread by concern over group.rs, upkeep.rs, metrics.rs and
/// mod.rs: all of them work under the one lock of the group's state.
pub(crate) struct Group {
    /// Its configuration.
    pub(crate) config: GroupConfig,
    /// Its endpoints, in the group's order.
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    pub(super) name: Arc<str>,
    pub(super) state: Mutex<GroupState>,
    pub(super) tick: AtomicUsize,
    pub(super) returned: Notify,
    /// Set when `close` gave up waiting: leases still out fail their next statement.
    pub(crate) revoked: AtomicBool,
    /// One-shot statements waiting for a pipeline slot (see `oneshot.rs`), over every thread.
    pub(super) slot_waiting: AtomicUsize,
    pub(super) counters: Counters,
    pub(super) events: Arc<Events>,
}

impl Group {
    pub(super) fn new(config: GroupConfig, endpoints: Vec<Arc<Endpoint>>, events: Arc<Events>) -> Self {
        let slots = Slots::new(endpoints.len(), config.connection_count);
        Self {
            name: Arc::from(config.name.as_str()),
            config,
            endpoints,
            state: Mutex::new(GroupState { slots, leased: HashMap::default() }),
            tick: AtomicUsize::new(0),
            returned: Notify::new(),
            revoked: AtomicBool::new(false),
            slot_waiting: AtomicUsize::new(0),
            counters: Counters::default(),
            events,
        }
    }

    /// Whether endpoint `e`'s known role lets this group use it.
    pub(super) fn eligible(&self, e: usize) -> bool {
        self.balancer().eligible(e)
    }

    pub(super) fn record(&self, kind: EventKind, e: usize, reason: Option<String>) {
        self.events.record(kind, Some(&self.name), Some(&self.endpoints[e].id), reason);
    }

    /// The group's endpoints as the balancer sees them.
    pub(super) fn balancer(&self) -> GroupEndpoints<'_> {
        GroupEndpoints { endpoints: &self.endpoints, config: &self.config }
    }

    /// Endpoint for a new connection or checkout (see [`GroupEndpoints::choose`]); advances
    /// the rotation.
    pub(super) fn choose(&self, state: &GroupState, now: Instant, exclude: &[usize]) -> Option<usize> {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        self.balancer().choose(&state.slots, now, exclude, tick)
    }

    /// Where to open a new connection given the chosen `e` (see [`GroupEndpoints::open_target`]).
    pub(super) fn open_target(&self, e: usize, now: Instant, exclude: &[usize]) -> Option<usize> {
        self.balancer().open_target(e, now, exclude)
    }

    /// The last error of each endpoint that could serve the group, for a checkout refused
    /// because all of them are banned.
    fn banned_causes(&self, exclude: &[usize]) -> Vec<String> {
        (0..self.endpoints.len()).filter(|&i| !exclude.contains(&i) && self.eligible(i)).map(|i| self.endpoints[i].banned_cause()).collect()
    }

    /// Why a connection must not be (re)used now, if it must not.
    pub(super) fn unfit(&self, conn: &PgConn, now: Instant) -> Option<DisconnectReason> {
        if conn.is_broken() {
            Some(DisconnectReason::Broken)
        } else if !self.eligible(conn.endpoint) {
            Some(DisconnectReason::WrongRole)
        } else if conn.expires.is_some_and(|t| t <= now) {
            Some(DisconnectReason::MaxLifetime)
        } else if self.config.max_uses > 0 && conn.uses.load(Ordering::Relaxed) >= self.config.max_uses {
            Some(DisconnectReason::MaxUses)
        } else {
            None
        }
    }

    /// Pops a usable idle connection of endpoint `e`; unusable ones met on the way are retired
    /// and their capacity freed.
    fn take_idle(&self, state: &mut GroupState, e: usize, now: Instant, retired: &mut Retired) -> Option<PgConn> {
        state.slots.lend(e, |conn| self.unfit(conn, now), retired)
    }

    /// Decides what a checkout does next, avoiding the endpoints in `exclude`: an idle session
    /// at hand, a new one while the group can grow, else a place in the FIFO (unless
    /// `max_waiting` checkouts already wait). Unusable idle sessions met on the way go to
    /// `retired`.
    fn plan(&self, exclude: &[usize], asker: Asker, retired: &mut Retired) -> Result<Plan, PoolError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        if state.slots.is_closed() {
            return Err(PoolError::Closed);
        }
        if !(0..self.endpoints.len()).any(|i| !exclude.contains(&i) && self.eligible(i)) {
            return Ok(Plan::NoEndpoint);
        }
        let endpoints = self.endpoints.len();
        if state.slots.waiting() == 0 {
            if let Some(e) = self.choose(&state, now, exclude) {
                if let Some(conn) = self.take_idle(&mut state, e, now, retired) {
                    return Ok(Plan::Ready(conn));
                }
                if state.slots.can_grow() {
                    if let Some(e) = self.open_target(e, now, exclude) {
                        state.slots.reserve_open(e);
                        return Ok(Plan::Open(e));
                    }
                    // Every endpoint is banned and was tried a moment ago: an idle connection
                    // left on one of them, else fail now rather than connect once per checkout.
                    for i in (0..endpoints).filter(|&i| !exclude.contains(&i) && self.eligible(i)) {
                        if let Some(conn) = self.take_idle(&mut state, i, now, retired) {
                            return Ok(Plan::Ready(conn));
                        }
                    }
                    return Ok(Plan::Offline);
                }
                // At capacity: an idle connection on a healthy endpoint beats waiting.
                let usable = |i: usize, banned: bool| self.eligible(i) && self.endpoints[i].is_banned(now) == banned;
                for i in (0..endpoints).filter(|&i| usable(i, false)) {
                    if let Some(conn) = self.take_idle(&mut state, i, now, retired) {
                        return Ok(Plan::Ready(conn));
                    }
                }
                // Idle capacity stuck on a banned endpoint moves to the healthy one chosen.
                if !self.endpoints[e].is_banned(now) {
                    if let Some(i) = (0..endpoints).find(|&i| self.endpoints[i].is_banned(now) && !state.slots.at(i).idle.is_empty()) {
                        if let Some(conn) = state.slots.move_idle(i, e) {
                            retired.push((conn, DisconnectReason::Rebalance));
                            return Ok(Plan::Open(e));
                        }
                    }
                }
                for i in (0..endpoints).filter(|&i| usable(i, true)) {
                    if let Some(conn) = self.take_idle(&mut state, i, now, retired) {
                        return Ok(Plan::Ready(conn));
                    }
                }
                // Retiring unusable connections may have freed capacity.
                if state.slots.can_grow() && state.slots.waiting() == 0 {
                    if let Some(e) = self.open_target(e, now, exclude) {
                        state.slots.reserve_open(e);
                        return Ok(Plan::Open(e));
                    }
                }
            }
        }
        self.check_max_waiting(&state, asker)?;
        let (id, rx) = state.slots.enqueue(asker.relayed_for());
        self.counters.waited(asker);
        Ok(Plan::Wait(id, rx))
    }

    /// The synchronous fast path: an idle, fresh, healthy connection if one is at hand right
    /// now and nobody is queued before us; `None` means take the asynchronous path.
    pub(crate) fn try_acquire_now(self: &Arc<Self>) -> Option<Lease> {
        let now = Instant::now();
        let ping_after = Duration::from_millis(self.config.ping_after_idle);
        let (conn, id) = {
            let mut state = self.state.lock();
            if state.slots.is_closed() || state.slots.waiting() > 0 {
                return None;
            }
            let usable = |c: &PgConn| self.unfit(c, now).is_none() && now.duration_since(c.last_alive) < ping_after;
            // Peek at the rotation; it advances only if this fast path succeeds, so a fall-back
            // to the asynchronous path does not skew the balance.
            let preferred = self.balancer().choose(&state.slots, now, &[], self.tick.load(Ordering::Relaxed));
            let e = preferred.filter(|&e| state.slots.at(e).idle.last().is_some_and(usable)).or_else(|| {
                // Only fall back to another endpoint when the preferred one cannot grow.
                if state.slots.can_grow() {
                    return None;
                }
                (0..self.endpoints.len()).find(|&i| !self.endpoints[i].is_banned(now) && state.slots.at(i).idle.last().is_some_and(usable))
            })?;
            let conn = state.slots.lend_now(e, usable)?;
            self.tick.fetch_add(1, Ordering::Relaxed);
            let id = register_lease(&mut state, &conn);
            (conn, id)
        };
        self.counters.acquired();
        Some(Lease::registered(self.clone(), conn, id))
    }

    /// Reserves an endpoint for a capacity unit granted to a waiter.
    fn reserve_open(&self, exclude: &[usize]) -> Option<usize> {
        let mut state = self.state.lock();
        let now = Instant::now();
        let e = self.choose(&state, now, exclude)?;
        let e = self.open_target(e, now, exclude)?;
        state.slots.open_granted(e);
        Some(e)
    }

    /// Counts and closes retired connections (outside the state lock).
    pub(super) fn retire(&self, retired: Retired) {
        for (conn, reason) in retired {
            self.counters.disconnected(reason);
            self.record(EventKind::Disconnect, conn.endpoint, Some(reason.as_str().into()));
        }
    }

    /// Returns a checked-out connection (or closes it); see [`Group::give_back`].
    pub(super) fn check_in(self: &Arc<Self>, conn: PgConn, how: Return) {
        self.give_back(conn, how, false, None);
    }

    /// [`Group::check_in`] of a lease's connection, ending the lease under the same lock.
    pub(super) fn check_in_leased(self: &Arc<Self>, conn: PgConn, how: Return, lease: u64) {
        self.give_back(conn, how, false, Some(lease));
    }

    /// Returns a connection that was checked out (or `borrowed` by the health monitor), or
    /// closes it, serving the first waiter if there is one. A connection retired for its age or
    /// use count is replaced in the background.
    pub(super) fn give_back(self: &Arc<Self>, mut conn: PgConn, how: Return, borrowed: bool, lease: Option<u64>) {
        let now = Instant::now();
        let e = conn.endpoint;
        let holder = if borrowed { Holder::Monitor } else { Holder::User };
        let mut retired = Retired::new();
        let mut replace = None;
        {
            let mut state = self.state.lock();
            if let Some(id) = lease {
                state.leased.remove(&id);
            }
            let reason = match how {
                _ if state.slots.is_closed() => Some(DisconnectReason::Closed),
                Return::Discard(reason) => Some(reason),
                _ => self.unfit(&conn, now),
            };
            match reason {
                Some(reason) => {
                    retired.push((conn, reason));
                    // A session retired for its age or use count is replaced, unless its unit can
                    // go to a waiter at once.
                    let renew = matches!(reason, DisconnectReason::MaxUses | DisconnectReason::MaxLifetime)
                        && state.slots.waiting() == 0
                        && !state.slots.is_closed();
                    match renew.then(|| self.choose(&state, now, &[])).flatten() {
                        Some(to) => {
                            state.slots.retire_and_replace(e, holder, to);
                            replace = Some(to);
                        }
                        None => state.slots.retire(e, holder),
                    }
                }
                None => {
                    if how == Return::Reuse {
                        conn.last_used = now;
                    }
                    conn.last_alive = now;
                    state.slots.take_back(e, conn, holder);
                }
            }
        }
        self.returned.notify_waiters();
        self.retire(retired);
        if let Some(to) = replace {
            self.open_in_background(to);
        }
    }

    /// Counts a one-shot statement that waits for a pipeline slot; refused past `max_waiting`,
    /// like a checkout. Pair with [`Group::slot_wait_ended`].
    pub(crate) fn slot_wait_begins(&self) -> Result<(), PoolError> {
        self.check_max_waiting(&self.state.lock(), Asker::Core)?;
        self.slot_waiting.fetch_add(1, Ordering::Relaxed);
        self.counters.waited(Asker::Core);
        Ok(())
    }

    /// Refuses one more waiter once `max_waiting` checkouts (queued here or waiting for a
    /// pipeline slot) already wait.
    fn check_max_waiting(&self, state: &GroupState, asker: Asker) -> Result<(), PoolError> {
        let waiting = state.slots.waiting() + self.slot_waiting.load(Ordering::Relaxed);
        if waiting < self.config.max_waiting {
            return Ok(());
        }
        self.counters.timed_out(asker);
        Err(PoolError::Timeout(format!("group '{}': {waiting} checkouts already waiting (max_waiting)", self.config.name)))
    }

    /// Ends a wait counted by [`Group::slot_wait_begins`].
    pub(crate) fn slot_wait_ended(&self) {
        self.slot_waiting.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether the group may open another connection (it is below `connection_count`).
    pub(crate) fn can_grow(&self) -> bool {
        self.state.lock().slots.can_grow()
    }

    /// The error of a checkout that waited out `acquire_timeout` (counted as a timeout).
    pub(crate) fn timeout_error(&self, detail: &str) -> PoolError {
        self.timeout_error_for(Asker::Core, detail)
    }

    /// [`Group::timeout_error`] of a checkout made by `asker`.
    pub(super) fn timeout_error_for(&self, asker: Asker, detail: &str) -> PoolError {
        self.counters.timed_out(asker);
        PoolError::Timeout(format!(
            "group '{}': no connection within acquire_timeout ({} ms): {detail}",
            self.config.name, self.config.acquire_timeout
        ))
    }

    /// The error of a pipelined statement that waited out `acquire_timeout` behind the
    /// statements ahead of it on its connection (counted as a timeout).
    pub(super) fn queued_too_long(&self) -> PoolError {
        self.counters.timed_out(Asker::Core);
        PoolError::Timeout(format!(
            "group '{}': the statement waited longer than acquire_timeout ({} ms) behind other statements on its connection; it had been sent and may still run",
            self.config.name, self.config.acquire_timeout
        ))
    }

    /// `DBOfflineError` for a group none of whose endpoints can serve it: the causes seen by
    /// this checkout, plus the endpoints whose role does not fit.
    fn no_endpoint_error(&self, mut causes: Vec<String>) -> PoolError {
        for ep in &self.endpoints {
            if let Some(role) = ep.role().filter(|r| !r.fits(self.config.target_session_attrs)) {
                causes.push(format!(
                    "{}: server is a {}, target_session_attrs is '{}'",
                    ep.label(),
                    role.describe(),
                    self.config.target_session_attrs.as_str()
                ));
            }
        }
        PoolError::Offline(causes)
    }

    /// Checks a connection out, waiting in FIFO order; the whole checkout (waiting, opening,
    /// pinging) ends within `acquire_timeout`.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<Lease, PoolError> {
        self.acquire_avoiding(Vec::new(), Asker::Core).await
    }

    /// [`Group::acquire`] on behalf of handler checkouts that wait in JavaScript: served in
    /// the same FIFO, but not counted as a wait or timeout of the group (see [`Asker::Relay`]).
    pub(crate) async fn acquire_relayed(self: &Arc<Self>, caller: u64) -> Result<Lease, PoolError> {
        self.acquire_avoiding(Vec::new(), Asker::Relay(caller)).await
    }

    /// [`Group::acquire`], opening new connections elsewhere than on `avoid` while another
    /// endpoint can serve the group.
    pub(super) async fn acquire_avoiding(self: &Arc<Self>, avoid: Vec<usize>, asker: Asker) -> Result<Lease, PoolError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.acquire_timeout);
        let elsewhere = (0..self.endpoints.len()).any(|i| !avoid.contains(&i) && self.eligible(i));
        let mut failed: Vec<usize> = if elsewhere { avoid } else { Vec::new() };
        let mut causes: Vec<String> = Vec::new();
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(self.timeout_error_for(asker, "every attempt failed or was too slow"));
            }
            let mut retired = Retired::new();
            let plan = self.plan(&failed, asker, &mut retired);
            self.retire(retired);
            let mut conn = match plan? {
                Plan::NoEndpoint => return Err(self.no_endpoint_error(causes)),
                Plan::Offline => {
                    causes.extend(self.banned_causes(&failed));
                    return Err(self.no_endpoint_error(causes));
                }
                Plan::Ready(conn) => conn,
                Plan::Open(e) => match self.open_until(e, deadline, asker).await? {
                    Ok(conn) => conn,
                    Err((e, cause)) => {
                        self.note_failure(e, cause, &mut failed, &mut causes)?;
                        continue;
                    }
                },
                Plan::Wait(id, rx) => match self.wait(id, rx, deadline, asker).await? {
                    Grant::Conn(conn) => conn,
                    Grant::Closed => return Err(PoolError::Closed),
                    Grant::Open => {
                        let Some(e) = self.reserve_open(&failed) else {
                            self.state.lock().slots.pass_capacity();
                            causes.extend(self.banned_causes(&failed));
                            return Err(self.no_endpoint_error(causes));
                        };
                        match self.open_until(e, deadline, asker).await? {
                            Ok(conn) => conn,
                            Err((e, cause)) => {
                                self.note_failure(e, cause, &mut failed, &mut causes)?;
                                continue;
                            }
                        }
                    }
                },
            };
            if let Some(reason) = self.unfit(&conn, Instant::now()) {
                self.check_in(conn, Return::Discard(reason));
                continue;
            }
            if conn.last_alive.elapsed() >= Duration::from_millis(self.config.ping_after_idle) {
                let endpoint = self.endpoints[conn.endpoint].clone();
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                // A checkout given up during the ping (an aborted statement) closes the session
                // (its answer may still be on the way) and frees the slot.
                let mut pinging = Returning { group: self.clone(), conn: Some(conn), reason: DisconnectReason::Error };
                let answer = match pinging.conn.as_ref() {
                    Some(c) => endpoint.check_session(&c.client, endpoint.connect_timeout().min(left)).await,
                    None => Answer::Dead,
                };
                let Some(back) = pinging.conn.take() else { continue };
                conn = back;
                match answer {
                    Answer::Alive => conn.last_alive = Instant::now(),
                    Answer::Dead | Answer::Silent => {
                        self.check_in(conn, Return::Discard(DisconnectReason::Broken));
                        continue;
                    }
                }
                if !self.eligible(conn.endpoint) {
                    self.check_in(conn, Return::Discard(DisconnectReason::WrongRole));
                    continue;
                }
            }
            self.counters.acquired();
            return Ok(Lease::new(self.clone(), conn));
        }
    }

    /// After a failed open: try the next endpoint, or give up once none is left.
    fn note_failure(&self, e: usize, cause: String, failed: &mut Vec<usize>, causes: &mut Vec<String>) -> Result<(), PoolError> {
        if !failed.contains(&e) {
            failed.push(e);
        }
        causes.push(cause);
        if !(0..self.endpoints.len()).any(|i| !failed.contains(&i) && self.eligible(i)) {
            return Err(self.no_endpoint_error(std::mem::take(causes)));
        }
        Ok(())
    }

    async fn wait(
        self: &Arc<Self>,
        id: u64,
        rx: oneshot::Receiver<Grant>,
        deadline: tokio::time::Instant,
        asker: Asker,
    ) -> Result<Grant, PoolError> {
        let mut queued = Queued { group: self, id, rx: Some(rx) };
        let Some(rx) = queued.rx.as_mut() else { return Err(PoolError::Closed) };
        if let Ok(Ok(grant)) = tokio::time::timeout_at(deadline, rx).await {
            queued.rx = None;
            return Ok(grant);
        }
        // Grants are sent under the lock: holding it, either we are still queued or the grant
        // is already in the channel — nothing can be lost in between.
        let Some(mut rx) = queued.rx.take() else { return Err(PoolError::Closed) };
        let mut state = self.state.lock();
        if state.slots.dequeue(id) {
            drop(state);
            return Err(self.timeout_error_for(asker, "every connection stayed in use"));
        }
        drop(state);
        rx.close();
        match rx.try_recv() {
            Ok(grant) => Ok(grant),
            Err(_) => Err(PoolError::Closed),
        }
    }
}

/// Records a session as leased (so that `close` can cancel what runs on it); returns the id.
pub(super) fn register_lease(state: &mut GroupState, conn: &PgConn) -> u64 {
    let id = state.slots.next_id();
    state.leased.insert(id, (conn.endpoint, conn.cancel_token.clone()));
    id
}

/// A checkout queued in its group's FIFO. Given up while it waits (an aborted statement, or
/// its task dropped), it leaves the queue, or hands back what was granted to it just then: a
/// connection, or a unit of capacity to open one with.
struct Queued<'a> {
    group: &'a Arc<Group>,
    id: u64,
    rx: Option<oneshot::Receiver<Grant>>,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        let mut state = self.group.state.lock();
        if state.slots.dequeue(self.id) {
            return;
        }
        rx.close();
        match rx.try_recv() {
            Ok(Grant::Conn(conn)) => {
                drop(state);
                self.group.check_in(conn, Return::Reuse);
            }
            Ok(Grant::Open) => state.slots.pass_capacity(),
            Ok(Grant::Closed) | Err(_) => {}
        }
    }
}
