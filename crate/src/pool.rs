//! Groups of connections over endpoints: checkout with FIFO waiting, release, balancing,
//! background health, roles and lifecycle, shutdown.
//!
//! Each group owns its connections. Capacity (`connection_count`) is counted over all of the
//! group's endpoints — idle, in use, being opened or being health-checked — so the server never
//! sees more than the configured number of sessions for a group, whichever endpoints they are
//! on (this is why the group does its own slot accounting rather than one deadpool per
//! endpoint).
//!
//! Roles are a property of the endpoint (see `role.rs`): a group uses an endpoint whose known
//! role fits its `target_session_attrs`, never hands out a connection on one that does not,
//! and takes it back once the monitor sees its role fit again (a promoted standby).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{oneshot, Notify};

use crate::balancer::{self, Candidate};
use crate::config::{GroupConfig, PoolConfig, TargetSessionAttrs};
use crate::conn::{pipelinable, PgConn};
use crate::endpoint::{Answer, CancelTarget, ConnectError, Endpoint};
use crate::error::PoolError;
use crate::events::{EventKind, Events};
use crate::slots::{self, Holder, Slots};
use crate::status::TxStatus;

/// Past `query_timeout`, how long the client waits for the server's own `statement_timeout`
/// error before it gives up on the server.
const CLIENT_TIMEOUT_GRACE: Duration = Duration::from_secs(1);
/// How long a rollback at release may take before the connection is dropped instead.
const RELEASE_ROLLBACK_LIMIT: Duration = Duration::from_secs(5);

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
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
    pub fn as_str(self) -> &'static str {
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
pub struct Counters {
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

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

type Grant = slots::Grant<PgConn>;

struct GroupState {
    /// Capacity and idle sessions; changed only through its transitions.
    slots: Slots<PgConn>,
    /// Sessions lent to users, so that `close` can cancel what runs on them.
    leased: HashMap<u64, (usize, Arc<CancelTarget>), BuildHasherDefault<IdHasher>>,
}

enum Plan {
    Ready(PgConn),
    Open(usize),
    Wait(u64, oneshot::Receiver<Grant>),
    /// No endpoint is left that could serve the group (wrong role, or failed just now).
    NoEndpoint,
    /// Every endpoint is banned, was tried moments ago, and has no idle connection left.
    Offline,
}

/// How a connection comes back to the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Return {
    /// From a user, reusable.
    Reuse,
    /// From a health check that it passed.
    Checked,
    /// To be closed.
    Discard(DisconnectReason),
}

/// Connections being closed, with why; they are counted and dropped outside the state lock.
type Retired = Vec<(PgConn, DisconnectReason)>;

/// Hashes lease ids (a counter) with one multiplication: the default SipHash cost more than
/// the rest of a checkout's bookkeeping.
#[derive(Default)]
struct IdHasher(u64);

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
pub struct Group {
    /// Its configuration.
    pub config: GroupConfig,
    /// Its endpoints, in the group's order.
    pub endpoints: Vec<Arc<Endpoint>>,
    name: Arc<str>,
    state: Mutex<GroupState>,
    tick: AtomicUsize,
    returned: Notify,
    /// Set when `close` gave up waiting: leases still out fail their next statement.
    pub revoked: AtomicBool,
    /// One-shot statements waiting for a pipeline slot (see `oneshot.rs`), over every thread.
    slot_waiting: AtomicUsize,
    counters: Counters,
    events: Arc<Events>,
}

impl Group {
    fn new(config: GroupConfig, endpoints: Vec<Arc<Endpoint>>, events: Arc<Events>) -> Self {
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
    fn eligible(&self, e: usize) -> bool {
        self.endpoints[e].allows(self.config.target_session_attrs)
    }

    fn record(&self, kind: EventKind, e: usize, reason: Option<String>) {
        self.events.record(kind, Some(&self.name), Some(&self.endpoints[e].id), reason);
    }

    /// Endpoint for a new connection or checkout: eligible healthy ones by the balance strategy
    /// (only standbys while one is healthy, for `prefer-standby`); when every eligible endpoint
    /// is banned, all of them (trying beats failing blind).
    fn choose(&self, state: &GroupState, now: Instant, exclude: &[usize]) -> Option<usize> {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        self.choose_at(state, now, exclude, tick)
    }

    fn choose_at(&self, state: &GroupState, now: Instant, exclude: &[usize], tick: usize) -> Option<usize> {
        let build = |ignore_bans: bool, standby_only: bool| -> Vec<Candidate> {
            self.endpoints
                .iter()
                .enumerate()
                .filter(|(i, ep)| {
                    !exclude.contains(i)
                        && self.eligible(*i)
                        && (ignore_bans || !ep.is_banned(now))
                        && (!standby_only || ep.role().is_some_and(|r| r.standby))
                })
                .map(|(i, ep)| Candidate { index: i, weight: ep.config.weight, busy: state.slots.at(i).in_use + state.slots.at(i).opening })
                .collect()
        };
        let mut candidates = Vec::new();
        if self.config.target_session_attrs == TargetSessionAttrs::PreferStandby {
            candidates = build(false, true);
        }
        if candidates.is_empty() {
            candidates = build(false, false);
        }
        if candidates.is_empty() {
            candidates = build(true, false);
        }
        balancer::choose(self.config.balance, &candidates, tick)
    }

    /// Where to open a new connection, given the endpoint `e` that `choose` picked: `e` itself
    /// unless it is banned (picked because every endpoint is), in which case only an endpoint
    /// whose forced attempt can be claimed now (see [`Endpoint::claim_forced_attempt`]).
    fn open_target(&self, e: usize, now: Instant, exclude: &[usize]) -> Option<usize> {
        let may_open = |i: usize| !self.endpoints[i].is_banned(now) || self.endpoints[i].claim_forced_attempt(now);
        if may_open(e) {
            return Some(e);
        }
        (0..self.endpoints.len()).find(|&i| i != e && !exclude.contains(&i) && self.eligible(i) && may_open(i))
    }

    /// The last error of each endpoint that could serve the group, for a checkout refused
    /// because all of them are banned.
    fn banned_causes(&self, exclude: &[usize]) -> Vec<String> {
        (0..self.endpoints.len()).filter(|&i| !exclude.contains(&i) && self.eligible(i)).map(|i| self.endpoints[i].banned_cause()).collect()
    }

    /// Why a connection must not be (re)used now, if it must not.
    fn unfit(&self, conn: &PgConn, now: Instant) -> Option<DisconnectReason> {
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

    fn plan(&self, exclude: &[usize], retired: &mut Retired) -> Result<Plan, PoolError> {
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
        self.check_max_waiting(&state)?;
        let (id, rx) = state.slots.enqueue();
        bump(&self.counters.waits);
        Ok(Plan::Wait(id, rx))
    }

    /// The synchronous fast path: an idle, fresh, healthy connection if one is at hand right
    /// now and nobody is queued before us; `None` means take the asynchronous path.
    pub fn try_acquire_now(self: &Arc<Self>) -> Option<Lease> {
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
            let preferred = self.choose_at(&state, now, &[], self.tick.load(Ordering::Relaxed));
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
        bump(&self.counters.acquires);
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
    fn retire(&self, retired: Retired) {
        for (conn, reason) in retired {
            bump(&self.counters.disconnects[reason as usize]);
            self.record(EventKind::Disconnect, conn.endpoint, Some(reason.as_str().into()));
        }
    }

    /// Returns a checked-out connection (or closes it); see [`Group::give_back`].
    fn check_in(self: &Arc<Self>, conn: PgConn, how: Return) {
        self.give_back(conn, how, false, None);
    }

    /// [`Group::check_in`] of a lease's connection, ending the lease under the same lock.
    fn check_in_leased(self: &Arc<Self>, conn: PgConn, how: Return, lease: u64) {
        self.give_back(conn, how, false, Some(lease));
    }

    /// Returns a connection that was checked out (or `borrowed` by the health monitor), or
    /// closes it, serving the first waiter if there is one. A connection retired for its age or
    /// use count is replaced in the background.
    fn give_back(self: &Arc<Self>, mut conn: PgConn, how: Return, borrowed: bool, lease: Option<u64>) {
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

    /// A reserved open failed or was abandoned: free its capacity.
    fn open_failed(&self, e: usize) {
        self.state.lock().slots.open_failed(e);
        self.returned.notify_waiters();
    }

    /// Opens a connection on endpoint `e` for which capacity was reserved.
    async fn open(self: &Arc<Self>, e: usize) -> Result<PgConn, (usize, String)> {
        let endpoint = &self.endpoints[e];
        match endpoint.connect(self.config.target_session_attrs, self.config.sqlprepare).await {
            Ok(opened) => {
                endpoint.record_success();
                bump(&self.counters.connects);
                let conn = PgConn::new(opened, e, self.config.statement_cache_size, self.config.max_lifetime);
                if !self.state.lock().slots.opened(e) {
                    // `close` waits for this open to end: without the wake-up it slept until
                    // its timeout (5 s by default) whenever a connect was in flight.
                    self.returned.notify_waiters();
                    return Err((e, "pool closed while connecting".into()));
                }
                self.record(EventKind::Connect, e, None);
                Ok(conn)
            }
            Err(err) => {
                bump(&self.counters.connect_errors);
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
    fn open_in_background(self: &Arc<Self>, e: usize) {
        let group = self.clone();
        crate::rt::spawn(async move {
            if let Ok(conn) = group.open(e).await {
                group.check_in(conn, Return::Reuse);
            }
        });
    }

    /// [`Group::open`] bounded by a checkout's deadline. The attempt runs on by itself past the
    /// deadline, so its capacity is accounted for either way, and a late connection is pooled.
    async fn open_until(self: &Arc<Self>, e: usize, deadline: tokio::time::Instant) -> Result<Result<PgConn, (usize, String)>, PoolError> {
        let (tx, rx) = oneshot::channel();
        let group = self.clone();
        crate::rt::spawn(async move {
            let result = group.open(e).await;
            if let Err(Ok(conn)) = tx.send(result) {
                group.check_in(conn, Return::Reuse);
            }
        });
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(PoolError::Connection(format!("{}: connect attempt aborted", self.endpoints[e].label()))),
            Err(_) => Err(self.timeout_error(&format!("connecting to {} took longer", self.endpoints[e].label()))),
        }
    }

    /// Counts a one-shot statement that waits for a pipeline slot; refused past `max_waiting`,
    /// like a checkout. Pair with [`Group::slot_wait_ended`].
    pub fn slot_wait_begins(&self) -> Result<(), PoolError> {
        self.check_max_waiting(&self.state.lock())?;
        self.slot_waiting.fetch_add(1, Ordering::Relaxed);
        bump(&self.counters.waits);
        Ok(())
    }

    /// Refuses one more waiter once `max_waiting` checkouts (queued here or waiting for a
    /// pipeline slot) already wait.
    fn check_max_waiting(&self, state: &GroupState) -> Result<(), PoolError> {
        let waiting = state.slots.waiting() + self.slot_waiting.load(Ordering::Relaxed);
        if waiting < self.config.max_waiting {
            return Ok(());
        }
        bump(&self.counters.timeouts);
        Err(PoolError::Timeout(format!("group '{}': {waiting} checkouts already waiting (max_waiting)", self.config.name)))
    }

    /// Ends a wait counted by [`Group::slot_wait_begins`].
    pub fn slot_wait_ended(&self) {
        self.slot_waiting.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether the group may open another connection (it is below `connection_count`).
    pub fn can_grow(&self) -> bool {
        self.state.lock().slots.can_grow()
    }

    /// The error of a checkout that waited out `acquire_timeout` (counted as a timeout).
    pub fn timeout_error(&self, detail: &str) -> PoolError {
        bump(&self.counters.timeouts);
        PoolError::Timeout(format!(
            "group '{}': no connection within acquire_timeout ({} ms): {detail}",
            self.config.name, self.config.acquire_timeout
        ))
    }

    /// The error of a pipelined statement that waited out `acquire_timeout` behind the
    /// statements ahead of it on its connection (counted as a timeout).
    fn queued_too_long(&self) -> PoolError {
        bump(&self.counters.timeouts);
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
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, PoolError> {
        self.acquire_avoiding(Vec::new()).await
    }

    /// [`Group::acquire`], opening new connections elsewhere than on `avoid` while another
    /// endpoint can serve the group.
    async fn acquire_avoiding(self: &Arc<Self>, avoid: Vec<usize>) -> Result<Lease, PoolError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.acquire_timeout);
        let elsewhere = (0..self.endpoints.len()).any(|i| !avoid.contains(&i) && self.eligible(i));
        let mut failed: Vec<usize> = if elsewhere { avoid } else { Vec::new() };
        let mut causes: Vec<String> = Vec::new();
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(self.timeout_error("every attempt failed or was too slow"));
            }
            let mut retired = Retired::new();
            let plan = self.plan(&failed, &mut retired);
            self.retire(retired);
            let mut conn = match plan? {
                Plan::NoEndpoint => return Err(self.no_endpoint_error(causes)),
                Plan::Offline => {
                    causes.extend(self.banned_causes(&failed));
                    return Err(self.no_endpoint_error(causes));
                }
                Plan::Ready(conn) => conn,
                Plan::Open(e) => match self.open_until(e, deadline).await? {
                    Ok(conn) => conn,
                    Err((e, cause)) => {
                        self.note_failure(e, cause, &mut failed, &mut causes)?;
                        continue;
                    }
                },
                Plan::Wait(id, rx) => match self.wait(id, rx, deadline).await? {
                    Grant::Conn(conn) => conn,
                    Grant::Closed => return Err(PoolError::Closed),
                    Grant::Open => {
                        let Some(e) = self.reserve_open(&failed) else {
                            self.state.lock().slots.pass_capacity();
                            causes.extend(self.banned_causes(&failed));
                            return Err(self.no_endpoint_error(causes));
                        };
                        match self.open_until(e, deadline).await? {
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
            bump(&self.counters.acquires);
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

    async fn wait(self: &Arc<Self>, id: u64, rx: oneshot::Receiver<Grant>, deadline: tokio::time::Instant) -> Result<Grant, PoolError> {
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
            return Err(self.timeout_error("every connection stayed in use"));
        }
        drop(state);
        rx.close();
        match rx.try_recv() {
            Ok(grant) => Ok(grant),
            Err(_) => Err(PoolError::Closed),
        }
    }

    /// Runs one statement on any connection of the group (autocommit, never inside a
    /// transaction) and releases the connection. See [`Group::run_one_shot_held`].
    #[allow(dead_code, reason = "for the bindings, wired separately")]
    pub async fn run_one_shot(self: &Arc<Self>, sql: &str, params: &[u8]) -> Result<Vec<u8>, PoolError> {
        let first = self.try_acquire_now();
        self.run_one_shot_held(first, sql, params).await.map(|(bytes, _lease)| bytes)
    }

    /// Runs one statement on any connection of the group (autocommit) and returns its encoded
    /// result with the connection still checked out, so that the caller can hold it until a
    /// large result has been taken (drop the lease to release). `first` is a connection already
    /// checked out (e.g. by [`Group::try_acquire_now`] on the JS thread); without it one is
    /// acquired. A connection found dead before the statement was sent is replaced and the
    /// statement retried (see [`Lease::query`]); a statement that may have run is not retried.
    #[allow(dead_code, reason = "for the bindings, wired separately")]
    pub async fn run_one_shot_held(
        self: &Arc<Self>,
        first: Option<Lease>,
        sql: &str,
        params: &[u8],
    ) -> Result<(Vec<u8>, Lease), PoolError> {
        let mut lease = match first {
            Some(lease) => lease,
            None => self.acquire().await?,
        };
        let bytes = lease.query(sql, params, true).await?;
        Ok((bytes, lease))
    }

    /// Opens one connection per endpoint so that `init` can report unreachable endpoints.
    pub async fn warm_up(self: &Arc<Self>) -> Result<(), PoolError> {
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

    fn close(&self) {
        let idle = self.state.lock().slots.close();
        self.retire(idle.into_iter().map(|c| (c, DisconnectReason::Closed)).collect());
    }

    fn outstanding(&self) -> usize {
        let state = self.state.lock();
        state.slots.all().iter().map(|s| s.in_use + s.opening).sum()
    }

    fn cancel_leased(&self) {
        let leased: Vec<(usize, Arc<CancelTarget>)> = self.state.lock().leased.values().cloned().collect();
        for (e, token) in leased {
            let endpoint = self.endpoints[e].clone();
            crate::rt::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.cancel(&token)).await;
            });
        }
    }

    fn stats(&self) -> GroupStats {
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
            waiting: state.slots.waiting() + self.slot_waiting.load(Ordering::Relaxed),
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

/// Cancels whatever statement runs on one session (PostgreSQL's cancel request).
#[derive(Clone)]
pub struct Canceller {
    endpoint: Arc<Endpoint>,
    token: Arc<CancelTarget>,
}

impl Canceller {
    /// Sends the cancel request; gives up after 2 s.
    pub async fn cancel(self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.cancel(&self.token)).await;
    }
}

/// Why a pipelined statement was given up (see [`Pipe::run`]).
pub enum Late {
    /// It waited behind the statements sent before it for longer than `acquire_timeout`.
    Queued,
    /// It ran longer than this client-side limit.
    Running(Duration),
    /// A statement ahead of it on the connection ran longer than this limit, and the
    /// connection was given up.
    GivenUp(Duration),
    /// The connection was given up before it was sent.
    Unsent,
}

/// The statements pipelined on one connection, in the order they went to its socket. The
/// server runs them in that order, so a statement is the one running once every statement sent
/// before it is done: its clock starts then.
#[derive(Default)]
pub struct Pipe {
    /// Places of the statements sent and not done yet, oldest first.
    sent: Mutex<(u64, VecDeque<u64>)>,
    moved: Notify,
    /// The `query_timeout` limit (ms) a statement ran past, after which every statement behind
    /// it fails at once (0: none did).
    given_up: AtomicU64,
}

/// A statement's place in its [`Pipe`], given up when it is done (or dropped).
struct Place<'a> {
    pipe: &'a Pipe,
    place: u64,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut sent = self.pipe.sent.lock();
        if let Some(i) = sent.1.iter().position(|&p| p == self.place) {
            sent.1.remove(i);
        }
        drop(sent);
        self.pipe.moved.notify_waiters();
    }
}

impl Pipe {
    fn is_head(&self, place: u64) -> bool {
        self.sent.lock().1.front() == Some(&place)
    }

    fn give_up(&self, limit: Duration) {
        self.given_up.store(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1), Ordering::Release);
        self.moved.notify_waiters();
    }

    fn given_up(&self) -> Option<Duration> {
        let ms = self.given_up.load(Ordering::Acquire);
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// Drives `work`, a statement that writes itself to the socket at its first poll: that poll
    /// happens with its place taken under the same lock, so places follow the order on the
    /// wire. It may wait until `queued` for the statements ahead of it, then run within
    /// `running` (none: no limit).
    async fn run<F: Future>(&self, work: F, queued: tokio::time::Instant, running: Option<Duration>) -> Result<F::Output, Late> {
        if self.given_up().is_some() {
            return Err(Late::Unsent);
        }
        tokio::pin!(work);
        let (place, first) = std::future::poll_fn(|cx| {
            let mut sent = self.sent.lock();
            let place = sent.0;
            sent.0 += 1;
            sent.1.push_back(place);
            let first = work.as_mut().poll(cx);
            Poll::Ready((place, first))
        })
        .await;
        let _place = Place { pipe: self, place };
        if let Poll::Ready(out) = first {
            return Ok(out);
        }
        loop {
            let moved = self.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            if let Some(limit) = self.given_up() {
                return Err(Late::GivenUp(limit));
            }
            if self.is_head(place) {
                break;
            }
            tokio::select! {
                biased;
                out = &mut work => return Ok(out),
                () = &mut moved => {}
                () = tokio::time::sleep_until(queued) => return Err(Late::Queued),
            }
        }
        match running {
            None => Ok(work.await),
            Some(limit) => tokio::time::timeout(limit, work).await.map_err(|_| Late::Running(limit)),
        }
    }
}

/// One operation on a lease's connection.
enum Op<'a> {
    Query { sql: &'a str, params: &'a [u8], begin: bool, plain: bool },
    Commit,
    Rollback,
}

/// A checked-out connection. Dropping it returns the connection (rolling back an open
/// transaction first) — release always happens, whatever the caller did.
pub struct Lease {
    group: Arc<Group>,
    conn: Option<PgConn>,
    id: u64,
    /// The session is lost or unusable: discard it at release. Atomic because pipelined
    /// one-shot statements share the lease.
    broken: AtomicBool,
    /// A write was refused as read-only: check the server's role before reusing the session.
    recheck: AtomicBool,
}

/// Records a session as leased (so that `close` can cancel what runs on it); returns the id.
fn register_lease(state: &mut GroupState, conn: &PgConn) -> u64 {
    let id = state.slots.next_id();
    state.leased.insert(id, (conn.endpoint, conn.cancel_token.clone()));
    id
}

impl Lease {
    fn new(group: Arc<Group>, conn: PgConn) -> Self {
        let id = register_lease(&mut group.state.lock(), &conn);
        Self::registered(group, conn, id)
    }

    /// A lease on `conn`, already recorded under `id` by [`register_lease`].
    fn registered(group: Arc<Group>, mut conn: PgConn, id: u64) -> Self {
        *conn.uses.get_mut() += 1;
        if group.events.hot() {
            group.record(EventKind::Acquire, conn.endpoint, None);
        }
        Self { group, conn: Some(conn), id, broken: AtomicBool::new(false), recheck: AtomicBool::new(false) }
    }

    fn conn(&mut self) -> Result<&mut PgConn, PoolError> {
        if self.group.revoked.load(Ordering::Relaxed) {
            return Err(PoolError::Closed);
        }
        if self.broken.load(Ordering::Relaxed) {
            return Err(PoolError::Connection("the connection of this handler was lost".into()));
        }
        self.conn.as_mut().ok_or(PoolError::Closed)
    }

    /// The client-side limit for one statement: the endpoint's `query_timeout` (which the server
    /// enforces as `statement_timeout`) plus a grace period for the server's own answer.
    fn client_timeout(&self) -> Option<Duration> {
        let conn = self.conn.as_ref()?;
        let ms = self.group.endpoints[conn.endpoint].config.query_timeout;
        (ms > 0).then(|| Duration::from_millis(ms) + CLIENT_TIMEOUT_GRACE)
    }

    /// The server did not answer in time: cancel the statement on the server and give up the
    /// session. The server may just be running a statement whose `statement_timeout` was
    /// turned off, so instead of banning the endpoint outright, probe it: silence bans it.
    fn timed_out(&self, limit: Duration) -> PoolError {
        self.broken.store(true, Ordering::Relaxed);
        bump(&self.group.counters.query_errors);
        let Some(conn) = self.conn.as_ref() else { return PoolError::Closed };
        let endpoint = self.group.endpoints[conn.endpoint].clone();
        let text = format!("no answer within {} ms (query_timeout, checked client-side)", limit.as_millis());
        self.group.record(EventKind::Error, conn.endpoint, Some(text.clone()));
        let message = format!("{}: {text}; the statement was cancelled and may have run", endpoint.label());
        let token = conn.cancel_token.clone();
        let canceller = endpoint.clone();
        crate::rt::spawn(async move {
            let _ = tokio::time::timeout(canceller.connect_timeout(), canceller.cancel(&token)).await;
        });
        if endpoint.begin_check() {
            crate::rt::spawn(async move {
                endpoint.probe().await;
                endpoint.end_check();
            });
        }
        PoolError::Connection(message)
    }

    fn note<T>(&self, result: Result<T, PoolError>) -> Result<T, PoolError> {
        let Err(e) = &result else { return result };
        bump(&self.group.counters.query_errors);
        if let PoolError::Db(db) = e {
            // read_only_sql_transaction: the server may have become read-only (or a standby).
            if db.code().code() == "25006" && self.group.config.target_session_attrs != TargetSessionAttrs::Any {
                self.recheck.store(true, Ordering::Relaxed);
            }
        }
        let lost = self.conn.as_ref().is_none_or(|c| c.is_broken());
        if !(lost || e.is_connection_fault()) {
            return result;
        }
        self.broken.store(true, Ordering::Relaxed);
        if let Some(conn) = &self.conn {
            self.group.record(EventKind::Error, conn.endpoint, Some(e.to_string()));
        }
        match e {
            PoolError::Db(_) | PoolError::Unsent(_) | PoolError::Connection(_) => result,
            PoolError::Query(m) => Err(PoolError::Connection(m.clone())),
            other => Err(PoolError::Connection(other.to_json())),
        }
    }

    /// Runs `op` on the connection within the client-side timeout, and notes the outcome.
    async fn bounded(&mut self, op: Op<'_>) -> Result<Vec<u8>, PoolError> {
        let limit = self.client_timeout();
        let conn = self.conn()?;
        let work = async {
            match op {
                Op::Query { sql, params, begin, plain } => conn.query(sql, params, begin, plain).await,
                Op::Commit => conn.commit().await.map(|()| Vec::new()),
                Op::Rollback => conn.rollback().await.map(|()| Vec::new()),
            }
        };
        let result = match limit {
            None => work.await,
            Some(limit) => {
                let outcome = tokio::time::timeout(limit, work).await;
                match outcome {
                    Ok(result) => result,
                    Err(_) => return Err(self.timed_out(limit)),
                }
            }
        };
        self.note(result)
    }

    /// Runs a statement; for `autocommit: false` groups the first one opens a transaction
    /// unless `standalone` (one-shot pool queries always run on their own).
    ///
    /// A `standalone` statement whose connection turns out dead before the statement was sent
    /// moves to another connection (possibly on another endpoint) and is retried, up to the
    /// group's endpoint count + 2 times; a statement that may have reached the server is never
    /// retried (its `DBConnectionError` says it may have run).
    pub async fn query(&mut self, sql: &str, params: &[u8], standalone: bool) -> Result<Vec<u8>, PoolError> {
        let autocommit = standalone || self.group.config.autocommit;
        // A plain one-shot read or write leaves no session state for a reset to undo.
        let plain = standalone && pipelinable(sql);
        let mut retries = 0;
        loop {
            let begin = (!autocommit && self.conn.as_ref().is_some_and(|c| c.tx() == TxStatus::Idle))
                || crate::pgcompat::current().is_some_and(|m| m.begin().is_some());
            let result = self.bounded(Op::Query { sql, params, begin, plain }).await;
            match result {
                Err(PoolError::Unsent(_)) if standalone && retries < self.group.endpoints.len() + 2 => {
                    retries += 1;
                    bump(&self.group.counters.retries);
                    // Another endpoint if there is one: this one just lost a session.
                    let avoid = self.conn.as_ref().map(|c| vec![c.endpoint]).unwrap_or_default();
                    let fresh = self.group.acquire_avoiding(avoid).await?;
                    // The old lease (marked broken) gives its connection back as it drops.
                    drop(std::mem::replace(self, fresh));
                }
                other => return other,
            }
        }
    }

    /// Commits the open transaction, if any.
    pub async fn commit(&mut self) -> Result<(), PoolError> {
        self.bounded(Op::Commit).await.map(drop)
    }

    /// Rolls back the open transaction, if any.
    pub async fn rollback(&mut self) -> Result<(), PoolError> {
        self.bounded(Op::Rollback).await.map(drop)
    }

    /// Runs a stand-alone statement while other tasks may run theirs on the same lease
    /// (pipelining, see `PgConn::prepare_shared`); `pipe` orders the statements sent on it. A
    /// lost connection is discarded at drop. If the session turns out dead before the statement
    /// was sent, the statement runs on a connection of its own instead (another endpoint if
    /// there is one); one that may have run is not retried.
    ///
    /// Its time behind the statements sent before it on the connection is bounded by
    /// `acquire_timeout`, like any wait for a connection; the client-side `query_timeout` (as in
    /// [`Lease::query`]) counts from when those are done and it is the one running — and only
    /// then can the cancel request of its timeout be meant for it.
    pub async fn query_shared(&self, sql: &str, params: &[u8], pipe: &Pipe) -> Result<Option<Vec<u8>>, PoolError> {
        if self.group.revoked.load(Ordering::Relaxed) {
            return Err(PoolError::Closed);
        }
        let conn = self.conn.as_ref().ok_or(PoolError::Closed)?;
        let result = if self.broken.load(Ordering::Relaxed) {
            Err(PoolError::Unsent("the shared connection was lost before the statement was sent".into()))
        } else {
            let queued = tokio::time::Instant::now() + Duration::from_millis(self.group.config.acquire_timeout);
            let limit = self.client_timeout();
            // Preparing it (on a cache miss) is a round trip of its own in the same queue.
            match pipe.run(conn.prepare_shared(sql, params), queued, limit).await {
                Err(Late::Unsent) => Err(self.late(Late::Unsent, pipe, conn.endpoint)),
                Err(late) => return Err(self.late(late, pipe, conn.endpoint)),
                Ok(Err(e)) => Err(e),
                Ok(Ok(prepared)) => match pipe.run(conn.execute_shared(prepared, sql, params), queued, limit).await {
                    Ok(result) => result,
                    Err(Late::Unsent) => Err(self.late(Late::Unsent, pipe, conn.endpoint)),
                    Err(late) => return Err(self.late(late, pipe, conn.endpoint)),
                },
            }
        };
        match self.note(result) {
            Err(PoolError::Unsent(_)) => {
                bump(&self.group.counters.retries);
                let mut fresh = self.group.acquire_avoiding(vec![conn.endpoint]).await?;
                fresh.query(sql, params, true).await.map(Some)
            }
            other => other,
        }
    }

    /// The error of a pipelined statement given up (see [`Late`]).
    fn late(&self, late: Late, pipe: &Pipe, endpoint: usize) -> PoolError {
        match late {
            Late::Running(limit) => {
                // The statements behind it on this connection will get no answer either.
                pipe.give_up(limit);
                self.timed_out(limit)
            }
            Late::Queued => self.group.queued_too_long(),
            Late::Unsent => PoolError::Unsent("the shared connection was given up before the statement was sent".into()),
            Late::GivenUp(limit) => {
                bump(&self.group.counters.query_errors);
                PoolError::Connection(format!(
                    "{}: no answer within {} ms to a statement sent before this one on its connection (query_timeout, checked client-side); the connection was given up, and this statement had been sent and may have run",
                    self.group.endpoints[endpoint].label(),
                    limit.as_millis()
                ))
            }
        }
    }

    /// Whether more statements may be pipelined on this lease: its session is alive, fits the
    /// group (role, age) and is not due for a role check, and no other checkout of the group is
    /// waiting for a connection.
    pub fn accepts_shared(&self) -> bool {
        let now = Instant::now();
        !self.broken.load(Ordering::Relaxed)
            && !self.recheck.load(Ordering::Relaxed)
            && self.conn.as_ref().is_some_and(|c| {
                !c.is_broken()
                    && c.tx() == TxStatus::Idle
                    && !c.reset_due()
                    && self.group.eligible(c.endpoint)
                    && c.expires.is_none_or(|t| t > now)
            })
            && self.group.state.lock().slots.waiting() == 0
    }

    /// Whether this lease may go straight to another checkout of the same JS thread instead of
    /// back to the pool: it is clean (no transaction, alive, fits the group, not expired or used
    /// up), the pool is not revoked, and no checkout other than the caller's own `own_waiting`
    /// ones is queued in the core (so other threads and one-shot queries are not starved).
    /// Counts as an acquire, and as a use for `max_uses`.
    pub fn hand_over(&mut self, own_waiting: usize) -> bool {
        let now = Instant::now();
        let Some(conn) = self.conn.as_ref() else { return false };
        let ok = !self.broken.load(Ordering::Relaxed)
            && !self.recheck.load(Ordering::Relaxed)
            && !self.group.revoked.load(Ordering::Relaxed)
            && conn.tx() == TxStatus::Idle
            && self.group.unfit(conn, now).is_none()
            && self.group.state.lock().slots.waiting() <= own_waiting;
        if ok {
            let Some(conn) = self.conn.as_mut() else { return false };
            // A new user: what the last one changed is reset in front of its first statement.
            if self.group.config.reset_on_release && conn.end_of_user() {
                bump(&self.group.counters.resets);
            }
            conn.uses.fetch_add(1, Ordering::Relaxed);
            bump(&self.group.counters.acquires);
            if self.group.events.hot() {
                self.group.record(EventKind::Release, conn.endpoint, None);
                self.group.record(EventKind::Acquire, conn.endpoint, None);
            }
        }
        ok
    }

    /// Closes the session at release instead of pooling it.
    pub fn discard(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    /// A handle that cancels the statement running on this session from elsewhere.
    pub fn canceller(&self) -> Option<Canceller> {
        let conn = self.conn.as_ref()?;
        Some(Canceller { endpoint: self.group.endpoints[conn.endpoint].clone(), token: conn.cancel_token.clone() })
    }

    /// Whether a reset for a new user is waiting for this session's next statement.
    pub fn reset_due(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.reset_due())
    }

    /// What the server reports on this lease's session (for `pgdbpool/pg`).
    pub fn session_status(&self) -> Option<Arc<crate::status::SessionStatus>> {
        self.conn.as_ref().map(|c| c.status.clone())
    }

    /// Whether a transaction is open on this lease.
    pub fn in_transaction(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.tx() != TxStatus::Idle)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            self.group.state.lock().leased.remove(&self.id);
            return;
        };
        let group = self.group.clone();
        if group.events.hot() {
            group.record(EventKind::Release, conn.endpoint, None);
        }
        if self.broken.load(Ordering::Relaxed) || conn.is_broken() {
            let reason = if conn.is_broken() { DisconnectReason::Broken } else { DisconnectReason::Error };
            group.check_in_leased(conn, Return::Discard(reason), self.id);
            return;
        }
        if group.config.reset_on_release && conn.end_of_user() {
            bump(&group.counters.resets);
        }
        let in_transaction = conn.tx() != TxStatus::Idle;
        if in_transaction || self.recheck.load(Ordering::Relaxed) {
            // No longer cancellable by `close` once its rollback runs in the background.
            group.state.lock().leased.remove(&self.id);
            // The slot stays taken until the rollback (with the reset, in one round trip) and
            // the role check are done, so nobody gets a session that is still inside someone
            // else's transaction or on a server that can no longer serve the group.
            let recheck = self.recheck.load(Ordering::Relaxed);
            if in_transaction {
                bump(&group.counters.release_rollbacks);
            }
            // Should the task never run to its end (the runtime shut down with the last JS
            // environment), the guard closes the session and frees its slot instead.
            let mut back = Returning { group, conn: Some(conn), reason: DisconnectReason::Closed };
            crate::rt::spawn(async move {
                let Some(conn) = back.conn.as_mut() else { return };
                let mut ok = true;
                if in_transaction {
                    let cleaned = tokio::time::timeout(RELEASE_ROLLBACK_LIMIT, conn.reset_now(true)).await;
                    ok = cleaned.is_ok_and(|r| r.is_ok()) && conn.tx() == TxStatus::Idle;
                }
                if ok && recheck {
                    let endpoint = back.group.endpoints[conn.endpoint].clone();
                    ok = endpoint.check_session(&conn.client, endpoint.connect_timeout()).await == Answer::Alive;
                }
                // A role that no longer fits is caught by check_in.
                back.finish(if ok { Return::Reuse } else { Return::Discard(DisconnectReason::Error) });
            });
        } else {
            // A due reset goes out in front of the next user's first statement.
            group.check_in_leased(conn, Return::Reuse, self.id);
        }
    }
}

/// A connection on its way back to its group from a background task. Dropped before
/// [`Returning::finish`] (its task was dropped unrun or half-way: the runtime shut down), it
/// closes the session and frees the slot, so that nothing waits for a task that never runs.
struct Returning {
    group: Arc<Group>,
    conn: Option<PgConn>,
    /// Why it is closed if it is dropped.
    reason: DisconnectReason,
}

impl Returning {
    fn finish(&mut self, how: Return) {
        if let Some(conn) = self.conn.take() {
            self.group.check_in(conn, how);
        }
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        self.finish(Return::Discard(self.reason));
    }
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

/// Gauges and counters of one endpoint within a group.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStats {
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
pub struct GroupStats {
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
    disconnects_by_reason: std::collections::BTreeMap<&'static str, u64>,
    query_errors: u64,
    retries: u64,
    resets: u64,
    release_rollbacks: u64,
    endpoints: Vec<EndpointStats>,
}

/// The whole pool: endpoints shared by groups.
pub struct Pool {
    /// Groups, in configuration order.
    pub groups: Vec<Arc<Group>>,
    endpoints: Vec<Arc<Endpoint>>,
    health_interval: Duration,
    closed: AtomicBool,
    /// JS pool objects attached to this pool (several with `threaded`).
    pub users: AtomicUsize,
    events: Arc<Events>,
}

impl Pool {
    /// Builds the pool (no I/O) and starts its health monitor.
    pub fn new(config: PoolConfig) -> Result<Arc<Self>, String> {
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
    #[allow(dead_code, reason = "for the bindings, wired separately")]
    pub fn events(&self) -> &Arc<Events> {
        &self.events
    }

    /// Opens the first connections; fails if some group cannot reach any endpoint.
    pub async fn warm_up(&self) -> Result<(), PoolError> {
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
    pub async fn close(&self, timeout: Duration) {
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
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// JSON snapshot of every group.
    pub fn stats_json(&self) -> String {
        let groups: Vec<GroupStats> = self.groups.iter().map(|g| g.stats()).collect();
        serde_json::to_string(&groups).unwrap_or_else(|_| "[]".into())
    }
}

/// Every `health_interval`: probes banned endpoints (re-admitting those that answer), checks
/// each other endpoint through one of its idle sessions (role and liveness; silence bans it),
/// probes endpoints whose role keeps a group away (to follow a promotion), and runs group
/// upkeep. Ends when the pool is gone or closed.
async fn monitor(pool: Weak<Pool>) {
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
