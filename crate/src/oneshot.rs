//! One-shot queries (`pool.query(...)`): no handler, any connection of the group.
//!
//! While the group has a free connection each query gets one of its own. Once every connection
//! is busy, further stand-alone reads and writes are pipelined onto the least-loaded connection
//! this module already holds (up to the group's `pipeline` depth), instead of queueing for a
//! connection: tokio-postgres writes them to the socket back to back and the server answers
//! them in order, which costs the server and the client far fewer wake-ups per query. A held
//! connection goes back to the pool as soon as nothing is in flight on it, and takes no new
//! work while any other checkout of the group is waiting, so handlers are never starved.
//!
//! When every held connection is full, a statement waits here for the next free pipeline slot
//! (handed over by the statement that frees it), not in the group's FIFO for a whole
//! connection: a one-shot waiting there would count as a waiting checkout and stop all
//! pipelining, so at concurrency 1000 nearly every statement went out in a write of its own.

use std::collections::VecDeque;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lru::LruCache;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use crate::conn::pipelinable;
use crate::error::PoolError;
use crate::pool::{Group, Lease, Pipe};

/// A connection this module holds, with the order of the statements in flight on it.
pub(crate) struct Shared {
    lease: Lease,
    pipe: Pipe,
}

impl Shared {
    fn new(lease: Lease) -> Arc<Self> {
        Arc::new(Self { lease, pipe: Pipe::default() })
    }
}

struct Held {
    lease: Arc<Shared>,
    /// Statements in flight on this connection; changed only under `OneShot::held`'s lock.
    inflight: usize,
}

/// Connections this module holds, and the statements waiting for a slot on one of them.
#[derive(Default)]
struct Holding {
    conns: Vec<Held>,
    /// Oldest first. `Some` hands over a slot (already counted in `inflight`); `None` says no
    /// connection is held any more, so the statement must wait for one from the group.
    waiting: VecDeque<oneshot::Sender<Option<Arc<Shared>>>>,
}

/// Ends a counted slot wait however the waiting future ends.
struct SlotWait<'a>(&'a Group);

impl Drop for SlotWait<'_> {
    fn drop(&mut self) {
        self.0.slot_wait_ended();
    }
}

/// The abort of one statement that has an `AbortSignal` (fired from the JS thread).
#[derive(Default)]
pub(crate) struct AbortCell {
    fired: AtomicBool,
    notify: Notify,
}

impl AbortCell {
    /// Aborts the statement.
    pub(crate) fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.fired() {
                return;
            }
            notified.await;
        }
    }
}

/// `wait` for a connection, unless `abort` fires first: then the wait is given up (every wait
/// here can be: see `Group::wait` and [`SlotClaim`]) and the statement never reaches the server.
async fn unless_aborted<T>(abort: Option<&AbortCell>, wait: impl Future<Output = Result<T, PoolError>>) -> Result<T, PoolError> {
    match abort {
        None => wait.await,
        Some(cell) => tokio::select! {
            biased;
            () = cell.wait() => Err(PoolError::Aborted),
            result = wait => result,
        },
    }
}

/// A wait for a pipeline slot. A slot handed over after the statement gave up (it was aborted,
/// or timed out just then) is given back, so that its connection's count stays right.
struct SlotClaim<'a> {
    shot: &'a OneShot,
    rx: oneshot::Receiver<Option<Arc<Shared>>>,
}

impl Drop for SlotClaim<'_> {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(Some(lease)) = self.rx.try_recv() {
            self.shot.finish(&lease);
        }
    }
}

/// Where a statement gets its connection.
enum Pick {
    Now(Arc<Shared>),
    /// A connection whose reset is due (its last user changed session state): the statement
    /// runs on it alone, behind the reset, before it is shared.
    Own(Lease),
    /// A held connection will free a slot.
    Slot(oneshot::Receiver<Option<Arc<Shared>>>),
    /// Nothing is held, or the group can open more: wait in the group's FIFO.
    Group,
}

/// A result this big is not worth pipelining: it costs the server as much as the round trip,
/// and results piling up behind each other only cost memory.
pub(crate) const LARGE_RESULT: usize = 256 * 1024;

/// The one-shot query path of one group.
pub(crate) struct OneShot {
    group: Arc<Group>,
    depth: usize,
    held: Mutex<Holding>,
    /// Statements whose last result was large: they run on a connection of their own.
    large: Mutex<LruCache<String, ()>>,
}

/// Keeps the connection a one-shot result came from until the result has been delivered.
pub(crate) enum Ticket {
    /// A pipelined slot on a held connection.
    Shared(Arc<OneShot>, Arc<Shared>),
    /// A connection of its own.
    Exclusive { _lease: Lease },
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ticket::Shared(shot, lease) = self {
            shot.finish(lease);
        }
    }
}

impl OneShot {
    /// The one-shot path of `group`; `depth` is how many statements may share a connection.
    pub(crate) fn new(group: Arc<Group>, depth: usize) -> Arc<Self> {
        let remembered = NonZeroUsize::MIN.saturating_add(255);
        Arc::new(Self { group, depth: depth.max(1), held: Mutex::new(Holding::default()), large: Mutex::new(LruCache::new(remembered)) })
    }

    /// Runs one stand-alone statement; the ticket holds its connection until dropped. With
    /// `abort`, the statement gives up while it waits for a connection or a slot when that
    /// fires, and then never reaches the server.
    pub(crate) async fn run(self: &Arc<Self>, sql: &str, params: &[u8], abort: Option<&AbortCell>) -> Result<(Vec<u8>, Ticket), PoolError> {
        let aborted = || abort.is_some_and(AbortCell::fired);
        if pipelinable(sql) && !self.large.lock().contains(sql) {
            let lease = match self.pick()? {
                Pick::Now(lease) => lease,
                Pick::Own(lease) => return self.run_alone(Some(lease), sql, params, abort).await,
                Pick::Slot(rx) => {
                    let _counted = SlotWait(&self.group);
                    let limit = Duration::from_millis(self.group.config.acquire_timeout);
                    let mut claim = SlotClaim { shot: self, rx };
                    let waited = unless_aborted(abort, async { Ok(tokio::time::timeout(limit, &mut claim.rx).await) }).await?;
                    match waited {
                        Ok(Ok(Some(lease))) => lease,
                        Ok(_) => match self.hold(unless_aborted(abort, self.group.acquire()).await?) {
                            Ok(lease) => lease,
                            Err(lease) => return self.run_alone(Some(lease), sql, params, abort).await,
                        },
                        Err(_) => return Err(self.group.timeout_error("every connection was busy")),
                    }
                }
                Pick::Group => match self.hold(unless_aborted(abort, self.group.acquire()).await?) {
                    Ok(lease) => lease,
                    Err(lease) => return self.run_alone(Some(lease), sql, params, abort).await,
                },
            };
            let ticket = Ticket::Shared(self.clone(), lease.clone());
            if aborted() {
                return Err(PoolError::Aborted);
            }
            if let Some(bytes) = lease.lease.query_shared(sql, params, &lease.pipe).await? {
                if bytes.len() >= LARGE_RESULT {
                    self.large.lock().put(sql.to_string(), ());
                }
                return Ok((bytes, ticket));
            }
            // Several statements in one text: they need a session of their own.
        }
        self.run_alone(None, sql, params, abort).await
    }

    /// Runs a statement on a connection of its own (`lease`, or one from the group).
    async fn run_alone(
        &self,
        lease: Option<Lease>,
        sql: &str,
        params: &[u8],
        abort: Option<&AbortCell>,
    ) -> Result<(Vec<u8>, Ticket), PoolError> {
        let aborted = || abort.is_some_and(AbortCell::fired);
        let mut lease = match lease.or_else(|| self.group.try_acquire_now()) {
            Some(lease) => lease,
            None => unless_aborted(abort, self.group.acquire()).await?,
        };
        if aborted() {
            return Err(PoolError::Aborted);
        }
        let bytes = lease.query(sql, params, true).await?;
        if bytes.len() < LARGE_RESULT {
            self.large.lock().pop(sql);
        }
        Ok((bytes, Ticket::Exclusive { _lease: lease }))
    }

    /// A connection for one more statement: a free one from the pool first, else the
    /// least-loaded held one if it may take more, else the next slot to free on a held one.
    fn pick(&self) -> Result<Pick, PoolError> {
        let mut held = self.held.lock();
        if let Some(lease) = self.group.try_acquire_now() {
            if lease.reset_due() {
                return Ok(Pick::Own(lease));
            }
            let lease = Shared::new(lease);
            held.conns.push(Held { lease: lease.clone(), inflight: 1 });
            return Ok(Pick::Now(lease));
        }
        if let Some(best) = held.conns.iter_mut().filter(|h| h.inflight < self.depth).min_by_key(|h| h.inflight) {
            if best.lease.lease.accepts_shared() {
                best.inflight += 1;
                return Ok(Pick::Now(best.lease.clone()));
            }
        }
        if held.conns.is_empty() || self.group.can_grow() {
            return Ok(Pick::Group);
        }
        self.group.slot_wait_begins()?;
        let (tx, rx) = oneshot::channel();
        // Statements that gave up waiting (the oldest, as every wait has the same limit) leave
        // their senders behind.
        while held.waiting.front().is_some_and(oneshot::Sender::is_closed) {
            held.waiting.pop_front();
        }
        held.waiting.push_back(tx);
        Ok(Pick::Slot(rx))
    }

    /// Shares `lease` from now on; a lease whose reset is due comes back, to run alone first.
    fn hold(&self, lease: Lease) -> Result<Arc<Shared>, Lease> {
        if lease.reset_due() {
            return Err(lease);
        }
        let lease = Shared::new(lease);
        self.held.lock().conns.push(Held { lease: lease.clone(), inflight: 1 });
        Ok(lease)
    }

    fn finish(&self, lease: &Arc<Shared>) {
        let mut held = self.held.lock();
        let Some(pos) = held.conns.iter().position(|h| Arc::ptr_eq(&h.lease, lease)) else { return };
        // The slot goes straight to the oldest waiting statement while the connection may take
        // more; one that gave up (its receiver is gone) is skipped.
        if !held.waiting.is_empty() && lease.lease.accepts_shared() {
            while let Some(waiter) = held.waiting.pop_front() {
                if waiter.send(Some(lease.clone())).is_ok() {
                    return;
                }
            }
        }
        held.conns[pos].inflight -= 1;
        if held.conns[pos].inflight == 0 {
            // The ticket's own reference is the last: the connection is checked in when it goes.
            held.conns.swap_remove(pos);
            if held.conns.is_empty() {
                // No slot will free here any more: the waiting statements go to the group.
                held.waiting.drain(..).for_each(|waiter| drop(waiter.send(None)));
            }
        }
    }
}
