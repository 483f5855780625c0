//! A checked-out connection: running statements on it (with the client-side timeout and the
//! retry of a statement that was never sent), and its release, which always happens when the
//! lease is dropped (rolling back an open transaction first).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;

use super::group::{register_lease, Group, Return};
use super::metrics::{Asker, DisconnectReason};
use super::pipe::{Late, Pipe};
use crate::config::TargetSessionAttrs;
use crate::conn::{pipelinable, PgConn};
use crate::endpoint::{Answer, CancelTarget, Endpoint};
use crate::error::PoolError;
use crate::events::EventKind;
use crate::status::{SessionStatus, TxStatus};

/// Past `query_timeout`, how long the client waits for the server's own `statement_timeout`
/// error before it gives up on the server.
const CLIENT_TIMEOUT_GRACE: Duration = Duration::from_secs(1);
/// How long a rollback at release may take before the connection is dropped instead.
const RELEASE_ROLLBACK_LIMIT: Duration = Duration::from_secs(5);

/// Cancels whatever statement runs on one session (PostgreSQL's cancel request).
#[derive(Clone)]
pub(crate) struct Canceller {
    endpoint: Arc<Endpoint>,
    token: Arc<CancelTarget>,
}

impl Canceller {
    /// Sends the cancel request; gives up after 2 s.
    pub(crate) async fn cancel(self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.cancel(&self.token)).await;
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
pub(crate) struct Lease {
    group: Arc<Group>,
    conn: Option<PgConn>,
    id: u64,
    /// The session is lost or unusable: discard it at release. Atomic because pipelined
    /// one-shot statements share the lease.
    broken: AtomicBool,
    /// A write was refused as read-only: check the server's role before reusing the session.
    recheck: AtomicBool,
}

impl Lease {
    pub(super) fn new(group: Arc<Group>, conn: PgConn) -> Self {
        let id = register_lease(&mut group.state.lock(), &conn);
        Self::registered(group, conn, id)
    }

    /// A lease on `conn`, already recorded under `id` by [`register_lease`].
    pub(super) fn registered(group: Arc<Group>, mut conn: PgConn, id: u64) -> Self {
        *conn.uses.get_mut() += 1;
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
        self.group.counters.query_failed();
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
        self.group.counters.query_failed();
        if let PoolError::Db(db) = e {
            // The server may have become read-only (or a standby).
            if *db.code() == SqlState::READ_ONLY_SQL_TRANSACTION && self.group.config.target_session_attrs != TargetSessionAttrs::Any {
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
    pub(crate) async fn query(&mut self, sql: &str, params: &[u8], standalone: bool) -> Result<Vec<u8>, PoolError> {
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
                    self.group.counters.retried();
                    // Another endpoint if there is one: this one just lost a session.
                    let avoid = self.conn.as_ref().map(|c| vec![c.endpoint]).unwrap_or_default();
                    let fresh = self.group.acquire_avoiding(avoid, Asker::Core).await?;
                    // The old lease (marked broken) gives its connection back as it drops.
                    drop(std::mem::replace(self, fresh));
                }
                other => return other,
            }
        }
    }

    /// Commits the open transaction, if any.
    pub(crate) async fn commit(&mut self) -> Result<(), PoolError> {
        self.bounded(Op::Commit).await.map(drop)
    }

    /// Rolls back the open transaction, if any.
    pub(crate) async fn rollback(&mut self) -> Result<(), PoolError> {
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
    pub(crate) async fn query_shared(&self, sql: &str, params: &[u8], pipe: &Pipe) -> Result<Option<Vec<u8>>, PoolError> {
        if self.group.revoked.load(Ordering::Relaxed) {
            return Err(PoolError::Closed);
        }
        let conn = self.conn.as_ref().ok_or(PoolError::Closed)?;
        // Polled from a JS thread's loop (see `jsloop`): that thread drives the session meanwhile.
        let _borrowed = crate::jsloop::borrow(&conn.driver);
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
                self.group.counters.retried();
                let mut fresh = self.group.acquire_avoiding(vec![conn.endpoint], Asker::Core).await?;
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
                self.group.counters.query_failed();
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
    pub(crate) fn accepts_shared(&self) -> bool {
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
    pub(crate) fn hand_over(&mut self, own_waiting: usize) -> bool {
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
                self.group.counters.reset();
            }
            conn.uses.fetch_add(1, Ordering::Relaxed);
            self.group.counters.acquired();
        }
        ok
    }

    /// Closes the session at release instead of pooling it.
    pub(crate) fn discard(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    /// A handle that cancels the statement running on this session from elsewhere.
    pub(crate) fn canceller(&self) -> Option<Canceller> {
        let conn = self.conn.as_ref()?;
        Some(Canceller { endpoint: self.group.endpoints[conn.endpoint].clone(), token: conn.cancel_token.clone() })
    }

    /// Whether a reset for a new user is waiting for this session's next statement.
    pub(crate) fn reset_due(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.reset_due())
    }

    /// What the server reports on this lease's session (for `pgdbpool/pg`).
    pub(crate) fn session_status(&self) -> Option<Arc<SessionStatus>> {
        self.conn.as_ref().map(|c| c.status.clone())
    }

    /// Whether a transaction is open on this lease.
    pub(crate) fn in_transaction(&self) -> bool {
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
        if self.broken.load(Ordering::Relaxed) || conn.is_broken() {
            let reason = if conn.is_broken() { DisconnectReason::Broken } else { DisconnectReason::Error };
            group.check_in_leased(conn, Return::Discard(reason), self.id);
            return;
        }
        if group.config.reset_on_release && conn.end_of_user() {
            group.counters.reset();
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
                group.counters.rolled_back_at_release();
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
pub(super) struct Returning {
    pub(super) group: Arc<Group>,
    pub(super) conn: Option<PgConn>,
    /// Why it is closed if it is dropped.
    pub(super) reason: DisconnectReason,
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
