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
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use lru::LruCache;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::conn::pipelinable;
use crate::error::PoolError;
use crate::pool::{Group, Lease};

struct Held {
    lease: Arc<Lease>,
    /// Statements in flight on this connection; changed only under `OneShot::held`'s lock.
    inflight: usize,
}

/// Connections this module holds, and the statements waiting for a slot on one of them.
#[derive(Default)]
struct Holding {
    conns: Vec<Held>,
    /// Oldest first. `Some` hands over a slot (already counted in `inflight`); `None` says no
    /// connection is held any more, so the statement must wait for one from the group.
    waiting: VecDeque<oneshot::Sender<Option<Arc<Lease>>>>,
}

/// Ends a counted slot wait however the waiting future ends.
struct SlotWait<'a>(&'a Group);

impl Drop for SlotWait<'_> {
    fn drop(&mut self) {
        self.0.slot_wait_ended();
    }
}

/// Where a statement gets its connection.
enum Pick {
    Now(Arc<Lease>),
    /// A connection whose reset is due (its last user changed session state): the statement
    /// runs on it alone, behind the reset, before it is shared.
    Own(Lease),
    /// A held connection will free a slot.
    Slot(oneshot::Receiver<Option<Arc<Lease>>>),
    /// Nothing is held, or the group can open more: wait in the group's FIFO.
    Group,
}

/// A result this big is not worth pipelining: it costs the server as much as the round trip,
/// and results piling up behind each other only cost memory.
pub const LARGE_RESULT: usize = 256 * 1024;

/// The one-shot query path of one group.
pub struct OneShot {
    group: Arc<Group>,
    depth: usize,
    held: Mutex<Holding>,
    /// Statements whose last result was large: they run on a connection of their own.
    large: Mutex<LruCache<String, ()>>,
}

/// Keeps the connection a one-shot result came from until the result has been delivered.
pub enum Ticket {
    /// A pipelined slot on a held connection.
    Shared(Arc<OneShot>, Arc<Lease>),
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
    pub fn new(group: Arc<Group>, depth: usize) -> Arc<Self> {
        let remembered = NonZeroUsize::new(256).expect("non-zero");
        Arc::new(Self { group, depth: depth.max(1), held: Mutex::new(Holding::default()), large: Mutex::new(LruCache::new(remembered)) })
    }

    /// Runs one stand-alone statement; the ticket holds its connection until dropped.
    pub async fn run(self: &Arc<Self>, sql: &str, params: &[u8]) -> Result<(Vec<u8>, Ticket), PoolError> {
        if pipelinable(sql) && !self.large.lock().contains(sql) {
            let lease = match self.pick()? {
                Pick::Now(lease) => lease,
                Pick::Own(lease) => return self.run_alone(Some(lease), sql, params).await,
                Pick::Slot(slot) => {
                    let _counted = SlotWait(&self.group);
                    let limit = Duration::from_millis(self.group.config.acquire_timeout);
                    match tokio::time::timeout(limit, slot).await {
                        Ok(Ok(Some(lease))) => lease,
                        Ok(_) => match self.hold(self.group.acquire().await?) {
                            Ok(lease) => lease,
                            Err(lease) => return self.run_alone(Some(lease), sql, params).await,
                        },
                        Err(_) => return Err(self.group.timeout_error("every connection was busy")),
                    }
                }
                Pick::Group => match self.hold(self.group.acquire().await?) {
                    Ok(lease) => lease,
                    Err(lease) => return self.run_alone(Some(lease), sql, params).await,
                },
            };
            let ticket = Ticket::Shared(self.clone(), lease.clone());
            if let Some(bytes) = lease.query_shared(sql, params).await? {
                if bytes.len() >= LARGE_RESULT {
                    self.large.lock().put(sql.to_string(), ());
                }
                return Ok((bytes, ticket));
            }
            // Several statements in one text: they need a session of their own.
        }
        self.run_alone(None, sql, params).await
    }

    /// Runs a statement on a connection of its own (`lease`, or one from the group).
    async fn run_alone(&self, lease: Option<Lease>, sql: &str, params: &[u8]) -> Result<(Vec<u8>, Ticket), PoolError> {
        let mut lease = match lease.or_else(|| self.group.try_acquire_now()) {
            Some(lease) => lease,
            None => self.group.acquire().await?,
        };
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
            let lease = Arc::new(lease);
            held.conns.push(Held { lease: lease.clone(), inflight: 1 });
            return Ok(Pick::Now(lease));
        }
        if let Some(best) = held.conns.iter_mut().filter(|h| h.inflight < self.depth).min_by_key(|h| h.inflight) {
            if best.lease.accepts_shared() {
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
    fn hold(&self, lease: Lease) -> Result<Arc<Lease>, Lease> {
        if lease.reset_due() {
            return Err(lease);
        }
        let lease = Arc::new(lease);
        self.held.lock().conns.push(Held { lease: lease.clone(), inflight: 1 });
        Ok(lease)
    }

    fn finish(&self, lease: &Arc<Lease>) {
        let mut held = self.held.lock();
        let Some(pos) = held.conns.iter().position(|h| Arc::ptr_eq(&h.lease, lease)) else { return };
        // The slot goes straight to the oldest waiting statement while the connection may take
        // more; one that gave up (its receiver is gone) is skipped.
        if !held.waiting.is_empty() && lease.accepts_shared() {
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
