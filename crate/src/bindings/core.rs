//! What one JS pool object holds: its pool, its completion queue, its handlers and the one-shot
//! runners of each group.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::completions::Completions;
use super::handlers::{HandlerSlot, HandlerTable};
use crate::error::PoolError;
use crate::oneshot::OneShot;
use crate::pool::{Group, Pool};

/// What a `NativePool` holds; also reachable by number through the registry.
pub(super) struct Core {
    pub(super) pool: Arc<Pool>,
    pub(super) completions: Arc<Completions>,
    /// This object no longer counts as a user of the pool (closed, or its environment is gone).
    detached: AtomicBool,
    /// Its JS environment is gone.
    abandoned: AtomicBool,
    oneshots: Vec<Arc<OneShot>>,
    pub(super) handlers: Mutex<HandlerTable>,
}

impl Core {
    /// A new user of `pool`, answering through `completions`.
    pub(super) fn new(pool: Arc<Pool>, completions: Arc<Completions>) -> Arc<Self> {
        pool.users.fetch_add(1, Ordering::SeqCst);
        let oneshots = pool.groups.iter().map(|g| OneShot::new(g.clone(), g.config.pipeline)).collect();
        Arc::new(Self {
            pool,
            completions,
            detached: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            oneshots,
            handlers: Mutex::new(HandlerTable::default()),
        })
    }

    /// This object's number as the pool's wait queue knows it (unique while it lives): the
    /// acquire requests its handlers make are told apart by it in `stats`.
    pub(super) fn caller(&self) -> u64 {
        std::ptr::from_ref(self) as usize as u64
    }

    /// The slot of `handler`, if it holds or is getting a connection.
    pub(super) fn handler(&self, handler: u32) -> Option<Arc<HandlerSlot>> {
        self.handlers.lock().get(handler).cloned()
    }

    /// The one-shot runner of group `index`, unless the pool is closed.
    pub(super) fn oneshot(&self, index: u32) -> Option<Arc<OneShot>> {
        if self.pool.is_closed() {
            return None;
        }
        self.oneshots.get(index as usize).cloned()
    }

    pub(super) fn group(&self, index: u32) -> Result<Arc<Group>, PoolError> {
        if self.pool.is_closed() {
            return Err(PoolError::Closed);
        }
        self.pool.groups.get(index as usize).cloned().ok_or_else(|| PoolError::Query(format!("no group #{index}")))
    }

    /// See `try_acquire_handler`.
    pub(super) fn try_acquire(&self, group: u32, handler: u32) -> Result<bool, PoolError> {
        let group = self.group(group)?;
        Ok(match group.try_acquire_now() {
            Some(lease) => {
                self.handlers.lock().insert(handler, HandlerSlot::new(group, Some(lease), self.caller()));
                true
            }
            None => false,
        })
    }

    /// See `release_handler`.
    pub(super) fn release(&self, handler: u32, hand_over: bool, own_waiting: u32) -> bool {
        let mut handlers = self.handlers.lock();
        let Some(slot) = handlers.get(handler).cloned() else { return false };
        if slot.release(hand_over, own_waiting) {
            // Same slot, same number: the next checkout takes it as it is.
            return true;
        }
        handlers.remove(handler);
        false
    }

    /// Stops counting as a user of the pool; true for the last user, who closes it.
    pub(super) fn detach(&self) -> bool {
        !self.detached.swap(true, Ordering::SeqCst) && self.pool.users.fetch_sub(1, Ordering::SeqCst) == 1
    }

    /// Its JS environment is gone (or the JS object was collected): it stops counting as a user
    /// of the pool and lets go of every handler (see [`HandlerSlot::abandon`]). Idempotent.
    pub(super) fn abandon(&self) {
        if self.abandoned.swap(true, Ordering::SeqCst) {
            return;
        }
        if !self.detached.swap(true, Ordering::SeqCst) {
            self.pool.users.fetch_sub(1, Ordering::SeqCst);
        }
        let slots = self.handlers.lock().drain();
        for slot in slots {
            slot.abandon();
        }
    }
}
