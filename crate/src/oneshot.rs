//! One-shot queries (`pool.query(...)`): no handler, any connection of the group.
//!
//! While the group has a free connection each query gets one of its own. Once every connection
//! is busy, further stand-alone reads and writes are pipelined onto the least-loaded connection
//! this module already holds (up to the group's `pipeline` depth), instead of queueing for a
//! connection: tokio-postgres writes them to the socket back to back and the server answers
//! them in order, which costs the server and the client far fewer wake-ups per query. A held
//! connection goes back to the pool as soon as nothing is in flight on it, and takes no new
//! work while any other checkout of the group is waiting, so handlers are never starved.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::conn::pipelinable;
use crate::error::PoolError;
use crate::pool::{Group, Lease};

struct Held {
    lease: Arc<Lease>,
    /// Statements in flight on this connection; changed only under `OneShot::held`'s lock.
    inflight: usize,
}

/// The one-shot query path of one group.
pub struct OneShot {
    group: Arc<Group>,
    depth: usize,
    held: Mutex<Vec<Held>>,
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
        Arc::new(Self { group, depth: depth.max(1), held: Mutex::new(Vec::new()) })
    }

    /// Runs one stand-alone statement; the ticket holds its connection until dropped.
    pub async fn run(self: &Arc<Self>, sql: &str, params: &[u8]) -> Result<(Vec<u8>, Ticket), PoolError> {
        if pipelinable(sql) {
            let lease = match self.pick() {
                Some(lease) => lease,
                // Every connection is busy and none can take more: wait in the group's FIFO.
                None => self.hold(self.group.acquire().await?),
            };
            let ticket = Ticket::Shared(self.clone(), lease.clone());
            if let Some(bytes) = lease.query_shared(sql, params).await? {
                return Ok((bytes, ticket));
            }
            // Several statements in one text: they need a session of their own.
        }
        let mut lease = match self.group.try_acquire_now() {
            Some(lease) => lease,
            None => self.group.acquire().await?,
        };
        let bytes = lease.query(sql, params, true).await?;
        Ok((bytes, Ticket::Exclusive { _lease: lease }))
    }

    /// A connection for one more statement without waiting: a free one from the pool first,
    /// else the least-loaded held one, if it may take more.
    fn pick(&self) -> Option<Arc<Lease>> {
        let mut held = self.held.lock();
        if let Some(lease) = self.group.try_acquire_now() {
            let lease = Arc::new(lease);
            held.push(Held { lease: lease.clone(), inflight: 1 });
            return Some(lease);
        }
        let best = held.iter_mut().filter(|h| h.inflight < self.depth).min_by_key(|h| h.inflight)?;
        if !best.lease.accepts_shared() {
            return None;
        }
        best.inflight += 1;
        Some(best.lease.clone())
    }

    fn hold(&self, lease: Lease) -> Arc<Lease> {
        let lease = Arc::new(lease);
        self.held.lock().push(Held { lease: lease.clone(), inflight: 1 });
        lease
    }

    fn finish(&self, lease: &Arc<Lease>) {
        let mut held = self.held.lock();
        let Some(pos) = held.iter().position(|h| Arc::ptr_eq(&h.lease, lease)) else { return };
        held[pos].inflight -= 1;
        if held[pos].inflight == 0 {
            // The ticket's own reference is the last: the connection is checked in when it goes.
            held.swap_remove(pos);
        }
    }
}
