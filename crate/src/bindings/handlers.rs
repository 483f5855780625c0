//! The core side of JS `Handler`s: each one's operations run strictly in submission order, on
//! one task at a time, on the connection it holds.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use parking_lot::Mutex;

use super::completions::{Completions, Settle};
use super::guard::test_panic;
use super::submission::Statement;
use crate::error::PoolError;
use crate::pgcompat::{PgMode, PG_MODE};
use crate::pool::{Canceller, Group, Lease};
use crate::status::SessionStatus;

/// One operation of a handler, run in submission order.
#[derive(Debug)]
pub(super) enum HandlerOp {
    Acquire {
        id: u32,
    },
    Query {
        id: u32,
        statement: Statement,
    },
    /// A statement of `pgdbpool/pg` (see `pgcompat`).
    PgQuery {
        id: u32,
        statement: Statement,
        mode: Arc<PgMode>,
    },
    Commit {
        id: u32,
    },
    Rollback {
        id: u32,
    },
}

impl HandlerOp {
    pub(super) fn id(&self) -> u32 {
        match self {
            HandlerOp::Acquire { id }
            | HandlerOp::Query { id, .. }
            | HandlerOp::PgQuery { id, .. }
            | HandlerOp::Commit { id }
            | HandlerOp::Rollback { id } => *id,
        }
    }

    /// A statement, which fails on a handler without a connection (ending a transaction there
    /// has nothing to do).
    pub(super) fn is_statement(&self) -> bool {
        matches!(self, HandlerOp::Query { .. } | HandlerOp::PgQuery { .. })
    }
}

struct HandlerState {
    lease: Option<Lease>,
    /// Kept outside the lease, which its task holds while a statement runs.
    canceller: Option<Canceller>,
    queue: VecDeque<HandlerOp>,
    /// A task is working through `queue` (and holds the lease while a statement runs).
    running: bool,
    /// The id of the operation the task is working on: the only one a cancel request may be
    /// sent for.
    current: Option<u32>,
    /// JS let go of the handler: the task drops the lease when the queue is done.
    released: bool,
    /// Cancel requests (from aborted queries) still on their way to the server: the handler's
    /// next statement waits for them, or a late one would cancel it (see `Endpoint::cancel`).
    cancels: Vec<tokio::task::JoinHandle<()>>,
    /// A cancel request was sent for this session. It never goes back to the pool: nothing
    /// tells when a cancel request has reached the server (a proxy may close the cancel
    /// connection before passing it on), and a late one would cancel another user's statement.
    cancelled: bool,
}

impl HandlerState {
    /// How to cancel on this session, worked out the first time it is needed (most handlers
    /// never cancel, and a cancel token costs an allocation per checkout).
    fn canceller(&mut self) -> Option<Canceller> {
        if self.canceller.is_none() {
            self.canceller = self.lease.as_ref().and_then(Lease::canceller);
        }
        self.canceller.clone()
    }

    /// Sends a cancel request for the statement running now; the session is closed at release.
    fn cancel_running(&mut self) {
        if let Some(canceller) = self.canceller() {
            if let Some(request) = crate::rt::spawn(canceller.cancel()) {
                self.cancels.push(request);
            }
            self.cancelled = true;
        }
    }

    /// Drops the lease (the connection goes back to the pool, or is closed if a cancel request
    /// was sent for it).
    fn let_go(&mut self) -> Option<Lease> {
        let lease = self.lease.take();
        if self.cancelled {
            lease.iter().for_each(Lease::discard);
        }
        lease
    }
}

/// Waits until the server has processed each cancel request (each gives up after 2 s).
async fn cancels_done(cancels: Vec<tokio::task::JoinHandle<()>>) {
    for cancel in cancels {
        let _ = cancel.await;
    }
}

/// The core side of one JS `Handler` while it holds (or is getting) a connection.
pub(super) struct HandlerSlot {
    group: Arc<Group>,
    /// The pool object whose JS checkouts this slot's acquire request serves (see `Core::caller`).
    caller: u64,
    state: Mutex<HandlerState>,
}

impl HandlerSlot {
    pub(super) fn new(group: Arc<Group>, lease: Option<Lease>, caller: u64) -> Arc<Self> {
        Arc::new(Self {
            group,
            caller,
            state: Mutex::new(HandlerState {
                lease,
                canceller: None,
                queue: VecDeque::new(),
                running: false,
                current: None,
                released: false,
                cancels: Vec::new(),
                cancelled: false,
            }),
        })
    }

    /// Queues `op`; returns true when the caller must start the task that runs the queue.
    pub(super) fn push(&self, op: HandlerOp) -> bool {
        let mut state = self.state.lock();
        state.queue.push_back(op);
        !std::mem::replace(&mut state.running, true)
    }

    /// Aborts operation `id`: still queued, it is dropped unrun (returns true: the caller answers
    /// it); running, it is cancelled on the server; otherwise nothing happens.
    pub(super) fn cancel(&self, id: u32) -> bool {
        let mut state = self.state.lock();
        if let Some(pos) = state.queue.iter().position(|op| op.id() == id) {
            state.queue.remove(pos);
            return true;
        }
        if state.current == Some(id) {
            state.cancel_running();
        }
        false
    }

    /// Whether a transaction is open (true while a statement is running).
    pub(super) fn in_transaction(&self) -> bool {
        let state = self.state.lock();
        match &state.lease {
            Some(lease) => lease.in_transaction(),
            None => state.running,
        }
    }

    /// The session held now (none while a statement is running).
    pub(super) fn session_status(&self) -> Option<Arc<SessionStatus>> {
        self.state.lock().lease.as_ref().and_then(Lease::session_status)
    }

    /// Closes the connection at release instead of pooling it.
    pub(super) fn discard(&self) {
        let mut state = self.state.lock();
        if let Some(lease) = &state.lease {
            lease.discard();
        }
        // Never handed over or pooled: release and the handler's task discard a cancelled session.
        state.cancelled = true;
    }

    /// JS let go of the handler. With `hand_over`, a clean idle connection stays in this slot
    /// for the caller's next waiting checkout (returns true), provided no checkout but the
    /// caller's `own_waiting` ones is queued in the pool. Otherwise an idle connection goes back
    /// now (rolled back in the background if a transaction is open), and a running task lets go
    /// of it once the queued operations are done.
    pub(super) fn release(&self, hand_over: bool, own_waiting: u32) -> bool {
        let mut state = self.state.lock();
        if !state.running
            && hand_over
            && !state.cancelled
            && state.lease.as_mut().is_some_and(|lease| lease.hand_over(own_waiting as usize))
        {
            return true;
        }
        state.released = true;
        if state.running {
            return false;
        }
        let lease = state.let_go();
        drop(state);
        drop(lease);
        false
    }

    /// The JS environment of this handler is going away: nobody will read its results. What is
    /// queued is dropped (a transaction never commits behind the back of a dead thread), a
    /// running statement is cancelled on the server (its session is closed once it ends), and
    /// an idle connection is returned, rolled back if a transaction is open.
    pub(super) fn abandon(&self) {
        let mut state = self.state.lock();
        state.released = true;
        state.queue.clear();
        if state.running {
            if state.lease.is_none() && state.current.is_some() {
                // The task holds the lease for a statement running now.
                state.cancel_running();
            }
            return;
        }
        let lease = state.let_go();
        drop(state);
        drop(lease);
    }

    /// The task that works through the queue, one operation at a time.
    pub(super) async fn run_queue(self: Arc<Self>, completions: Arc<Completions>) {
        loop {
            let (op, mut lease, cancels) = {
                let mut state = self.state.lock();
                match state.queue.pop_front() {
                    Some(op) => {
                        // Known before the lease leaves the slot, so a cancel while it runs works.
                        state.canceller();
                        state.current = Some(op.id());
                        (op, state.lease.take(), std::mem::take(&mut state.cancels))
                    }
                    None => {
                        state.running = false;
                        state.current = None;
                        let done = if state.released { state.let_go() } else { None };
                        drop(state);
                        drop(done);
                        return;
                    }
                }
            };
            let id = op.id();
            let mut settle = Settle::new(&completions, id, false);
            let run = AssertUnwindSafe(async {
                cancels_done(cancels).await;
                match op {
                    HandlerOp::Acquire { .. } => match lease {
                        Some(_) => Ok(Vec::new()),
                        None => self.group.acquire_relayed(self.caller).await.map(|l| {
                            lease = Some(l);
                            Vec::new()
                        }),
                    },
                    HandlerOp::Query { statement, .. } => run_statement(lease.as_mut(), &statement).await,
                    HandlerOp::PgQuery { statement, mode, .. } => PG_MODE.scope(mode, run_statement(lease.as_mut(), &statement)).await,
                    HandlerOp::Commit { .. } => end_transaction(lease.as_mut(), true).await,
                    HandlerOp::Rollback { .. } => end_transaction(lease.as_mut(), false).await,
                }
            })
            .catch_unwind()
            .await;
            let result = run.unwrap_or_else(|payload| {
                // The session's state is unknown after a panic: it is closed at release, and
                // the handler's next statements fail (as after a lost connection).
                lease.iter().for_each(Lease::discard);
                Err(PoolError::from_panic("handler operation", &*payload))
            });
            // Put the lease back before JS hears of the result, so that a synchronous call made
            // from the result's continuation sees it. With nothing more queued the task ends
            // here too, for the same reason: a `release()` from that continuation must find the
            // slot idle and check the connection in itself, not leave it to this task a moment
            // later (meanwhile `stats()` said in use and the hand-over to a waiter was missed).
            let finished = {
                let mut state = self.state.lock();
                state.lease = lease;
                state.current = None;
                let finished = state.queue.is_empty() && !state.released;
                if finished {
                    state.running = false;
                }
                finished
            };
            settle.disarm();
            completions.complete(id, result);
            if finished {
                return;
            }
        }
    }
}

/// The error of a statement on a handler that holds no connection.
pub(super) fn no_connection() -> PoolError {
    PoolError::Query("this handler holds no connection (its checkout failed or it was released)".into())
}

async fn run_statement(lease: Option<&mut Lease>, statement: &Statement) -> Result<Vec<u8>, PoolError> {
    test_panic(&statement.sql, false);
    let sql = statement.text()?;
    lease.ok_or_else(no_connection)?.query(sql, &statement.params, false).await
}

async fn end_transaction(lease: Option<&mut Lease>, commit: bool) -> Result<Vec<u8>, PoolError> {
    let Some(lease) = lease else { return Ok(Vec::new()) };
    if commit {
        lease.commit().await?;
    } else {
        lease.rollback().await?;
    }
    Ok(Vec::new())
}

/// Handler slots by the JS handler number. JS hands out small numbers and reuses freed ones,
/// so a vector indexed by number does what a hash map did, without hashing on every checkout.
#[derive(Default)]
pub(super) struct HandlerTable(Vec<Option<Arc<HandlerSlot>>>);

impl HandlerTable {
    pub(super) fn get(&self, handler: u32) -> Option<&Arc<HandlerSlot>> {
        self.0.get(handler as usize).and_then(Option::as_ref)
    }

    pub(super) fn insert(&mut self, handler: u32, slot: Arc<HandlerSlot>) {
        let i = handler as usize;
        if i >= self.0.len() {
            self.0.resize_with(i + 1, || None);
        }
        self.0[i] = Some(slot);
    }

    pub(super) fn remove(&mut self, handler: u32) -> Option<Arc<HandlerSlot>> {
        self.0.get_mut(handler as usize).and_then(Option::take)
    }

    /// Empties the table.
    pub(super) fn drain(&mut self) -> Vec<Arc<HandlerSlot>> {
        self.0.drain(..).flatten().collect()
    }
}
