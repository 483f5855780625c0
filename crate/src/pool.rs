//! Groups of connections over endpoints: checkout with FIFO waiting, release, balancing,
//! background health and lifecycle, shutdown.
//!
//! Each group owns its connections. Capacity (`connection_count`) is counted over all of the
//! group's endpoints — idle, in use and being opened — so the server never sees more than the
//! configured number of sessions for a group, whichever endpoints they are on (this is why the
//! group does its own slot accounting rather than one deadpool per endpoint).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{oneshot, Notify};
use tokio_postgres::CancelToken;

use crate::balancer::{self, Candidate};
use crate::config::{GroupConfig, PoolConfig};
use crate::conn::{PgConn, TxState};
use crate::endpoint::{ConnectError, Endpoint};
use crate::error::PoolError;

/// How long a group avoids an endpoint whose role does not fit it before re-checking.
const WRONG_ROLE_RECHECK: Duration = Duration::from_secs(2);

/// Process-wide counters of one group.
#[derive(Default, Debug)]
pub struct Counters {
    acquires: AtomicU64,
    waits: AtomicU64,
    timeouts: AtomicU64,
    connects: AtomicU64,
    connect_errors: AtomicU64,
    disconnects: AtomicU64,
    query_errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct Slot {
    idle: Vec<PgConn>,
    in_use: usize,
    opening: usize,
    wrong_role_until: Option<Instant>,
}

impl Slot {
    fn size(&self) -> usize {
        self.idle.len() + self.in_use + self.opening
    }
}

enum Grant {
    Conn(PgConn),
    /// A unit of capacity was reserved for the waiter; it opens a connection itself.
    Open,
    Closed,
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Grant>,
}

struct GroupState {
    slots: Vec<Slot>,
    total: usize,
    waiters: VecDeque<Waiter>,
    next_id: u64,
    leased: HashMap<u64, (usize, CancelToken)>,
    closed: bool,
}

enum Plan {
    Ready(PgConn),
    Open(usize),
    Wait(u64, oneshot::Receiver<Grant>),
}

/// A group of connections.
pub struct Group {
    /// Its configuration.
    pub config: GroupConfig,
    /// Its endpoints, in the group's order.
    pub endpoints: Vec<Arc<Endpoint>>,
    state: Mutex<GroupState>,
    tick: AtomicUsize,
    returned: Notify,
    /// Set when `close` gave up waiting: leases still out fail their next statement.
    pub revoked: AtomicBool,
    counters: Counters,
}

impl Group {
    fn new(config: GroupConfig, endpoints: Vec<Arc<Endpoint>>) -> Self {
        let slots = endpoints
            .iter()
            .map(|_| Slot { idle: Vec::new(), in_use: 0, opening: 0, wrong_role_until: None })
            .collect();
        Self {
            config,
            endpoints,
            state: Mutex::new(GroupState {
                slots,
                total: 0,
                waiters: VecDeque::new(),
                next_id: 0,
                leased: HashMap::new(),
                closed: false,
            }),
            tick: AtomicUsize::new(0),
            returned: Notify::new(),
            revoked: AtomicBool::new(false),
            counters: Counters::default(),
        }
    }

    /// Endpoint for a new connection or checkout: healthy ones by the balance strategy; when
    /// every endpoint is banned, all of them (trying beats failing blind).
    fn choose(&self, state: &GroupState, now: Instant, exclude: &[usize]) -> Option<usize> {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        self.choose_at(state, now, exclude, tick)
    }

    fn choose_at(&self, state: &GroupState, now: Instant, exclude: &[usize], tick: usize) -> Option<usize> {
        let build = |ignore_bans: bool| -> Vec<Candidate> {
            self.endpoints
                .iter()
                .enumerate()
                .filter(|(i, ep)| {
                    !exclude.contains(i)
                        && state.slots[*i].wrong_role_until.is_none_or(|t| t <= now)
                        && (ignore_bans || !ep.is_banned(now))
                })
                .map(|(i, ep)| Candidate {
                    index: i,
                    weight: ep.config.weight,
                    busy: state.slots[i].in_use + state.slots[i].opening,
                })
                .collect()
        };
        let mut candidates = build(false);
        if candidates.is_empty() {
            candidates = build(true);
        }
        balancer::choose(self.config.balance, &candidates, tick)
    }

    fn plan(&self, exclude: &[usize]) -> Result<Plan, PoolError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        if state.closed {
            return Err(PoolError::Closed);
        }
        if state.slots.iter().all(|s| s.wrong_role_until.is_some_and(|t| t > now)) {
            return Err(PoolError::Offline(
                self.endpoints
                    .iter()
                    .map(|e| format!("{}: server role does not match target_session_attrs '{:?}'", e.label(), self.config.target_session_attrs))
                    .collect(),
            ));
        }
        if state.waiters.is_empty() {
            if let Some(e) = self.choose(&state, now, exclude) {
                if let Some(conn) = state.slots[e].idle.pop() {
                    state.slots[e].in_use += 1;
                    return Ok(Plan::Ready(conn));
                }
                if state.total < self.config.connection_count {
                    state.total += 1;
                    state.slots[e].opening += 1;
                    return Ok(Plan::Open(e));
                }
            }
            // At capacity: any idle connection beats waiting. Prefer healthy endpoints.
            let pick = (0..state.slots.len())
                .filter(|&i| !state.slots[i].idle.is_empty())
                .min_by_key(|&i| self.endpoints[i].is_banned(now));
            if let Some(i) = pick {
                if let Some(conn) = state.slots[i].idle.pop() {
                    state.slots[i].in_use += 1;
                    return Ok(Plan::Ready(conn));
                }
            }
        }
        if state.waiters.len() >= self.config.max_waiting {
            bump(&self.counters.timeouts);
            return Err(PoolError::Timeout(format!(
                "group '{}': {} checkouts already waiting (max_waiting)",
                self.config.name,
                state.waiters.len()
            )));
        }
        let (tx, rx) = oneshot::channel();
        let id = state.next_id;
        state.next_id += 1;
        state.waiters.push_back(Waiter { id, tx });
        bump(&self.counters.waits);
        Ok(Plan::Wait(id, rx))
    }

    /// The synchronous fast path: an idle, fresh, healthy connection if one is at hand right
    /// now and nobody is queued before us; `None` means take the asynchronous path.
    pub fn try_acquire_now(self: &Arc<Self>) -> Option<Lease> {
        let now = Instant::now();
        let ping_after = Duration::from_millis(self.config.ping_after_idle);
        let conn = {
            let mut state = self.state.lock();
            if state.closed || !state.waiters.is_empty() {
                return None;
            }
            let usable = |c: &PgConn| !c.is_broken() && now.duration_since(c.last_used) < ping_after;
            // Peek at the rotation; it advances only if this fast path succeeds, so a fall-back
            // to the asynchronous path does not skew the balance.
            let preferred = self.choose_at(&state, now, &[], self.tick.load(Ordering::Relaxed));
            let e = preferred
                .filter(|&e| state.slots[e].idle.last().is_some_and(usable))
                .or_else(|| {
                    // Only fall back to another endpoint when the preferred one cannot grow.
                    if state.total < self.config.connection_count {
                        return None;
                    }
                    (0..state.slots.len()).find(|&i| state.slots[i].idle.last().is_some_and(usable))
                })?;
            let conn = state.slots[e].idle.pop()?;
            state.slots[e].in_use += 1;
            self.tick.fetch_add(1, Ordering::Relaxed);
            conn
        };
        bump(&self.counters.acquires);
        Some(Lease::new(self.clone(), conn))
    }

    /// Reserves an endpoint for a capacity unit granted to a waiter.
    fn reserve_open(&self, exclude: &[usize]) -> Option<usize> {
        let mut state = self.state.lock();
        let e = self.choose(&state, Instant::now(), exclude)?;
        state.slots[e].opening += 1;
        Some(e)
    }

    /// Hands one unit of freed capacity to the first waiter still waiting, or gives it back.
    fn pass_capacity(&self, state: &mut GroupState) {
        while let Some(waiter) = state.waiters.pop_front() {
            if waiter.tx.send(Grant::Open).is_ok() {
                return;
            }
        }
        state.total -= 1;
    }

    /// Returns a connection (or discards it), serving the first waiter if there is one.
    fn check_in(&self, mut conn: PgConn, reusable: bool) {
        let mut dropped = None;
        {
            let mut state = self.state.lock();
            let e = conn.endpoint;
            state.slots[e].in_use -= 1;
            let expired = conn.expires.is_some_and(|t| t <= Instant::now());
            if state.closed || !reusable || expired || conn.is_broken() {
                bump(&self.counters.disconnects);
                dropped = Some(conn);
                if state.closed {
                    state.total -= 1;
                } else {
                    self.pass_capacity(&mut state);
                }
            } else {
                conn.last_used = Instant::now();
                loop {
                    let Some(waiter) = state.waiters.pop_front() else {
                        state.slots[e].idle.push(conn);
                        break;
                    };
                    state.slots[e].in_use += 1;
                    match waiter.tx.send(Grant::Conn(conn)) {
                        Ok(()) => break,
                        Err(Grant::Conn(back)) => {
                            state.slots[e].in_use -= 1;
                            conn = back;
                        }
                        Err(_) => unreachable!("only Conn was sent"),
                    }
                }
            }
        }
        self.returned.notify_waiters();
        drop(dropped);
    }

    /// A reserved open failed or was abandoned: free its capacity.
    fn open_failed(&self, e: usize) {
        let mut state = self.state.lock();
        state.slots[e].opening -= 1;
        if state.closed {
            state.total -= 1;
        } else {
            self.pass_capacity(&mut state);
        }
        drop(state);
        self.returned.notify_waiters();
    }

    /// Opens a connection on endpoint `e` for which capacity was reserved.
    async fn open(&self, e: usize) -> Result<PgConn, (usize, String)> {
        let endpoint = &self.endpoints[e];
        match endpoint.connect(&self.config).await {
            Ok(client) => {
                endpoint.record_success();
                bump(&self.counters.connects);
                let conn = PgConn::new(client, e, self.config.statement_cache_size, self.config.max_lifetime);
                let mut state = self.state.lock();
                state.slots[e].opening -= 1;
                state.slots[e].wrong_role_until = None;
                if state.closed {
                    state.total -= 1;
                    return Err((e, "pool closed while connecting".into()));
                }
                state.slots[e].in_use += 1;
                Ok(conn)
            }
            Err(err) => {
                bump(&self.counters.connect_errors);
                let text = match err {
                    ConnectError::Unreachable(text) => {
                        endpoint.record_failure(&text);
                        text
                    }
                    ConnectError::WrongRole(text) => {
                        self.state.lock().slots[e].wrong_role_until = Some(Instant::now() + WRONG_ROLE_RECHECK);
                        text
                    }
                };
                self.open_failed(e);
                Err((e, format!("{}: {}", endpoint.label(), text)))
            }
        }
    }

    /// Checks a connection out, waiting in FIFO order up to `acquire_timeout`.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, PoolError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.acquire_timeout);
        let mut failed: Vec<usize> = Vec::new();
        let mut causes: Vec<String> = Vec::new();
        loop {
            let conn = match self.plan(&failed)? {
                Plan::Ready(conn) => conn,
                Plan::Open(e) => match self.open(e).await {
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
                            let mut state = self.state.lock();
                            self.pass_capacity(&mut state);
                            return Err(PoolError::Offline(causes));
                        };
                        match self.open(e).await {
                            Ok(conn) => conn,
                            Err((e, cause)) => {
                                self.note_failure(e, cause, &mut failed, &mut causes)?;
                                continue;
                            }
                        }
                    }
                },
            };
            if conn.is_broken() {
                self.check_in(conn, false);
                continue;
            }
            if conn.last_used.elapsed() >= Duration::from_millis(self.config.ping_after_idle) && !conn.ping().await {
                self.check_in(conn, false);
                continue;
            }
            bump(&self.counters.acquires);
            return Ok(Lease::new(self.clone(), conn));
        }
    }

    /// After a failed open: try the next endpoint, or give up once every one has failed.
    fn note_failure(&self, e: usize, cause: String, failed: &mut Vec<usize>, causes: &mut Vec<String>) -> Result<(), PoolError> {
        if !failed.contains(&e) {
            failed.push(e);
        }
        causes.push(cause);
        if failed.len() >= self.endpoints.len() {
            return Err(PoolError::Offline(std::mem::take(causes)));
        }
        Ok(())
    }

    async fn wait(&self, id: u64, mut rx: oneshot::Receiver<Grant>, deadline: tokio::time::Instant) -> Result<Grant, PoolError> {
        if let Ok(Ok(grant)) = tokio::time::timeout_at(deadline, &mut rx).await {
            return Ok(grant);
        }
        // Grants are sent under the lock: holding it, either we are still queued or the grant
        // is already in the channel — nothing can be lost in between.
        let mut state = self.state.lock();
        if let Some(pos) = state.waiters.iter().position(|w| w.id == id) {
            state.waiters.remove(pos);
            bump(&self.counters.timeouts);
            return Err(PoolError::Timeout(format!(
                "group '{}': no connection free within acquire_timeout ({} ms)",
                self.config.name, self.config.acquire_timeout
            )));
        }
        rx.close();
        match rx.try_recv() {
            Ok(grant) => Ok(grant),
            Err(_) => Err(PoolError::Closed),
        }
    }

    /// Opens one connection per endpoint so that `init` can report unreachable endpoints.
    pub async fn warm_up(self: &Arc<Self>) -> Result<(), PoolError> {
        if self.state.lock().total > 0 {
            // Joined an already running (shared) pool.
            return Ok(());
        }
        let want = self.endpoints.len().min(self.config.connection_count).max(self.config.min_idle.min(self.config.connection_count));
        let mut reserved = Vec::new();
        {
            let mut state = self.state.lock();
            for k in 0..want {
                if state.total >= self.config.connection_count {
                    break;
                }
                let e = k % self.endpoints.len();
                state.total += 1;
                state.slots[e].opening += 1;
                reserved.push(e);
            }
        }
        let attempts = reserved.into_iter().map(|e| {
            let group = self.clone();
            async move {
                match group.open(e).await {
                    Ok(conn) => {
                        group.check_in(conn, true);
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

    /// Background upkeep: drop dead and expired idle connections, honour `idle_timeout` and
    /// `min_idle`, and move capacity towards endpoints that are under their share.
    fn maintain(self: &Arc<Self>) {
        let now = Instant::now();
        let mut dropped = Vec::new();
        let mut to_open = Vec::new();
        {
            let mut state = self.state.lock();
            if state.closed {
                return;
            }
            let idle_timeout = Duration::from_millis(self.config.idle_timeout);
            let min_idle = self.config.min_idle;
            for e in 0..state.slots.len() {
                let mut keep = Vec::new();
                for conn in std::mem::take(&mut state.slots[e].idle) {
                    let dead = conn.is_broken() || conn.expires.is_some_and(|t| t <= now);
                    let idle_too_long = self.config.idle_timeout > 0 && now.duration_since(conn.last_used) >= idle_timeout;
                    if dead || (idle_too_long && state.total - dropped.len() > min_idle) {
                        dropped.push(conn);
                    } else {
                        keep.push(conn);
                    }
                }
                state.slots[e].idle = keep;
            }
            for _ in 0..dropped.len() {
                self.pass_capacity(&mut state);
            }
            // Refill up to min_idle.
            while state.total < min_idle.min(self.config.connection_count) && state.waiters.is_empty() {
                let Some(e) = self.choose(&state, now, &[]) else { break };
                state.total += 1;
                state.slots[e].opening += 1;
                to_open.push(e);
            }
            // Rebalance: one move per round from an over-share endpoint with idle connections
            // to a healthy under-share one (e.g. an endpoint that came back after an outage).
            if to_open.is_empty() && state.total >= self.config.connection_count {
                if let Some((from, to)) = self.rebalance_move(&state, now) {
                    if let Some(conn) = state.slots[from].idle.pop() {
                        dropped.push(conn);
                        state.slots[to].opening += 1;
                        to_open.push(to);
                    }
                }
            }
        }
        for _ in &dropped {
            bump(&self.counters.disconnects);
        }
        drop(dropped);
        for e in to_open {
            let group = self.clone();
            napi::bindgen_prelude::spawn(async move {
                if let Ok(conn) = group.open(e).await {
                    group.check_in(conn, true);
                }
            });
        }
    }

    fn rebalance_move(&self, state: &GroupState, now: Instant) -> Option<(usize, usize)> {
        let usable: Vec<usize> = (0..self.endpoints.len())
            .filter(|&i| !self.endpoints[i].is_banned(now) && state.slots[i].wrong_role_until.is_none_or(|t| t <= now))
            .collect();
        if usable.len() < 2 {
            return None;
        }
        let weight_sum: u32 = usable.iter().map(|&i| self.endpoints[i].config.weight.max(1)).sum();
        let share = |i: usize| {
            (self.config.connection_count as f64 * f64::from(self.endpoints[i].config.weight.max(1)) / f64::from(weight_sum)).floor() as usize
        };
        let to = usable.iter().copied().find(|&i| state.slots[i].size() < share(i))?;
        let from = (0..self.endpoints.len())
            .filter(|&i| i != to && !state.slots[i].idle.is_empty())
            .find(|&i| !usable.contains(&i) || state.slots[i].size() > share(i))?;
        Some((from, to))
    }

    fn close(&self) -> Vec<PgConn> {
        let mut state = self.state.lock();
        state.closed = true;
        for waiter in state.waiters.drain(..) {
            let _ = waiter.tx.send(Grant::Closed);
        }
        let mut idle = Vec::new();
        for slot in state.slots.iter_mut() {
            idle.append(&mut slot.idle);
        }
        state.total -= idle.len();
        idle
    }

    fn outstanding(&self) -> usize {
        let state = self.state.lock();
        state.slots.iter().map(|s| s.in_use + s.opening).sum()
    }

    fn cancel_leased(&self) {
        let leased: Vec<(usize, CancelToken)> = self.state.lock().leased.values().cloned().collect();
        for (e, token) in leased {
            let endpoint = self.endpoints[e].clone();
            napi::bindgen_prelude::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.cancel(token)).await;
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
                EndpointStats {
                    id: ep.config.id.clone(),
                    host: ep.config.host.clone(),
                    port: ep.config.port,
                    size: state.slots[i].size(),
                    idle: state.slots[i].idle.len(),
                    in_use: state.slots[i].in_use,
                    opening: state.slots[i].opening,
                    banned: health.banned_until.is_some_and(|t| t > now),
                    wrong_role: state.slots[i].wrong_role_until.is_some_and(|t| t > now),
                    failures: health.failures,
                    last_error: health.last_error.clone(),
                }
            })
            .collect::<Vec<_>>();
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GroupStats {
            name: self.config.name.clone(),
            max: self.config.connection_count,
            size: state.total,
            idle: state.slots.iter().map(|s| s.idle.len()).sum(),
            in_use: state.slots.iter().map(|s| s.in_use).sum(),
            opening: state.slots.iter().map(|s| s.opening).sum(),
            waiting: state.waiters.len(),
            acquires: load(&c.acquires),
            waits: load(&c.waits),
            timeouts: load(&c.timeouts),
            connects: load(&c.connects),
            connect_errors: load(&c.connect_errors),
            disconnects: load(&c.disconnects),
            query_errors: load(&c.query_errors),
            endpoints,
        }
    }
}

/// Cancels whatever statement runs on one session (PostgreSQL's cancel request).
#[derive(Clone)]
pub struct Canceller {
    endpoint: Arc<Endpoint>,
    token: CancelToken,
}

impl Canceller {
    /// Sends the cancel request; gives up after 2 s.
    pub async fn cancel(self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.cancel(self.token)).await;
    }
}

/// A checked-out connection. Dropping it returns the connection (rolling back an open
/// transaction first) — release always happens, whatever the caller did.
pub struct Lease {
    group: Arc<Group>,
    conn: Option<PgConn>,
    id: u64,
    broken: bool,
}

impl Lease {
    fn new(group: Arc<Group>, conn: PgConn) -> Self {
        let token = conn.client.cancel_token();
        let id = {
            let mut state = group.state.lock();
            let id = state.next_id;
            state.next_id += 1;
            state.leased.insert(id, (conn.endpoint, token));
            id
        };
        Self { group, conn: Some(conn), id, broken: false }
    }

    fn conn(&mut self) -> Result<&mut PgConn, PoolError> {
        if self.group.revoked.load(Ordering::Relaxed) {
            return Err(PoolError::Closed);
        }
        if self.broken {
            return Err(PoolError::Connection("the connection of this handler was lost".into()));
        }
        self.conn.as_mut().ok_or(PoolError::Closed)
    }

    fn note<T>(&mut self, result: Result<T, PoolError>) -> Result<T, PoolError> {
        if let Err(e) = &result {
            bump(&self.group.counters.query_errors);
            let lost = self.conn.as_ref().is_none_or(|c| c.is_broken());
            if lost || e.is_connection_fault() {
                self.broken = true;
                if let PoolError::Db(_) = e {
                    return result;
                }
                return Err(PoolError::Connection(match e {
                    PoolError::Connection(m) | PoolError::Query(m) => m.clone(),
                    other => other.to_json(),
                }));
            }
        }
        result
    }

    /// Runs a statement; for `autocommit: false` groups the first one opens a transaction
    /// unless `standalone` (one-shot pool queries always run on their own).
    pub async fn query(&mut self, sql: &str, params: &[u8], standalone: bool) -> Result<Vec<u8>, PoolError> {
        let autocommit = standalone || self.group.config.autocommit;
        let conn = self.conn()?;
        let begin = !autocommit && conn.tx == TxState::Idle;
        let result = conn.query(sql, params, begin).await;
        self.note(result)
    }

    /// Commits the open transaction, if any.
    pub async fn commit(&mut self) -> Result<(), PoolError> {
        let conn = self.conn()?;
        let result = conn.commit().await;
        self.note(result)
    }

    /// Rolls back the open transaction, if any.
    pub async fn rollback(&mut self) -> Result<(), PoolError> {
        let conn = self.conn()?;
        let result = conn.rollback().await;
        self.note(result)
    }

    /// Runs a stand-alone statement while other tasks may run theirs on the same lease
    /// (pipelining, see `PgConn::query_shared`). A lost connection is discarded at drop.
    pub async fn query_shared(&self, sql: &str, params: &[u8]) -> Result<Option<Vec<u8>>, PoolError> {
        if self.group.revoked.load(Ordering::Relaxed) {
            return Err(PoolError::Closed);
        }
        let conn = self.conn.as_ref().ok_or(PoolError::Closed)?;
        let result = conn.query_shared(sql, params).await;
        if result.is_err() {
            bump(&self.group.counters.query_errors);
        }
        result
    }

    /// Whether more statements may be pipelined on this lease: its session is alive and not
    /// due for replacement, and no other checkout of the group is waiting for a connection.
    pub fn accepts_shared(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.is_broken() && c.expires.is_none_or(|t| t > Instant::now()))
            && self.group.state.lock().waiters.is_empty()
    }

    /// Whether this lease may go straight to another checkout of the same JS thread instead of
    /// back to the pool: it is clean (no transaction, alive, not expired), the pool is not
    /// revoked, and no checkout other than the caller's own `own_waiting` ones is queued in the
    /// core (so other threads and one-shot queries are not starved). Counts as an acquire.
    pub fn hand_over(&self, own_waiting: usize) -> bool {
        let ok = !self.broken
            && !self.group.revoked.load(Ordering::Relaxed)
            && self.conn.as_ref().is_some_and(|c| c.tx == TxState::Idle && !c.is_broken() && c.expires.is_none_or(|t| t > Instant::now()))
            && self.group.state.lock().waiters.len() <= own_waiting;
        if ok {
            bump(&self.group.counters.acquires);
        }
        ok
    }

    /// A handle that cancels the statement running on this session from elsewhere.
    pub fn canceller(&self) -> Option<Canceller> {
        let conn = self.conn.as_ref()?;
        Some(Canceller { endpoint: self.group.endpoints[conn.endpoint].clone(), token: conn.client.cancel_token() })
    }

    /// Whether a transaction is open on this lease.
    pub fn in_transaction(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.tx != TxState::Idle)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.group.state.lock().leased.remove(&self.id);
        let Some(mut conn) = self.conn.take() else { return };
        let group = self.group.clone();
        if self.broken || conn.is_broken() {
            group.check_in(conn, false);
        } else if conn.tx != TxState::Idle {
            // The slot stays taken until the rollback is done, so nobody gets a connection
            // that is still inside someone else's transaction.
            napi::bindgen_prelude::spawn(async move {
                let ok = tokio::time::timeout(Duration::from_secs(5), conn.rollback()).await.is_ok_and(|r| r.is_ok());
                group.check_in(conn, ok);
            });
        } else {
            group.check_in(conn, true);
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
    query_errors: u64,
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
}

impl Pool {
    /// Builds the pool (no I/O) and starts its health monitor.
    pub fn new(config: PoolConfig) -> Result<Arc<Self>, String> {
        let endpoints = config
            .endpoints
            .into_iter()
            .map(|c| Endpoint::new(c).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let groups = config
            .groups
            .into_iter()
            .map(|g| {
                let eps = g.endpoints.iter().map(|&i| endpoints[i].clone()).collect();
                Arc::new(Group::new(g, eps))
            })
            .collect();
        let pool = Arc::new(Self {
            groups,
            endpoints,
            health_interval: Duration::from_millis(config.health_interval.max(10)),
            closed: AtomicBool::new(false),
            users: AtomicUsize::new(0),
        });
        napi::bindgen_prelude::spawn(monitor(Arc::downgrade(&pool)));
        Ok(pool)
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
        let idle: Vec<PgConn> = self.groups.iter().flat_map(|g| g.close()).collect();
        drop(idle);
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

/// Probes banned endpoints and runs group upkeep until the pool is gone or closed.
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
            let due = {
                let mut health = endpoint.health.lock();
                let due = health.failures > 0 && health.banned_until.is_none_or(|t| t <= now);
                if due {
                    // Stay banned while the probe runs, so rounds do not stack probes.
                    health.banned_until = Some(now + Duration::from_secs_f64(endpoint.config.connect_timeout));
                }
                due
            };
            if due {
                let endpoint = endpoint.clone();
                // A probe is a plain session open; on success the endpoint is re-admitted.
                let Some(group) = pool.groups.iter().find(|g| g.endpoints.iter().any(|e| Arc::ptr_eq(e, &endpoint))).cloned() else {
                    continue;
                };
                napi::bindgen_prelude::spawn(async move {
                    let probe_config = GroupConfig { sqlprepare: false, target_session_attrs: crate::config::TargetSessionAttrs::Any, ..group.config.clone() };
                    match endpoint.connect(&probe_config).await {
                        Ok(client) => {
                            drop(client);
                            endpoint.record_success();
                        }
                        Err(ConnectError::Unreachable(text) | ConnectError::WrongRole(text)) => endpoint.record_failure(&text),
                    }
                });
            }
        }
        for group in &pool.groups {
            group.maintain();
        }
    }
}
