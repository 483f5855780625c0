//! Lifecycle events of a pool (connect, disconnect, ban, role change, …), kept in a bounded
//! queue until JavaScript drains them.
//!
//! Recording never blocks on JavaScript and never grows without bound: past
//! [`Events::CAPACITY`] the oldest event is dropped and counted. Acquire and release happen on
//! every checkout, so they are recorded only while [`Events::set_hot`] is on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A connection was opened.
    Connect,
    /// A connection was closed; `reason` says why (see `DisconnectReason`).
    Disconnect,
    /// A connection was checked out (only while hot events are on).
    Acquire,
    /// A connection was given back (only while hot events are on).
    Release,
    /// An endpoint was banned after a failure; `reason` is the failure.
    Ban,
    /// A banned endpoint answered again.
    Unban,
    /// An endpoint's server role changed; `reason` is the new role.
    RoleChange,
    /// A connect or a connection failed; `reason` is the error text.
    Error,
}

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// Milliseconds since the Unix epoch.
    pub at: u64,
    /// Group name, for events of one group's connections.
    pub group: Option<Arc<str>>,
    /// Endpoint id.
    pub endpoint: Option<Arc<str>>,
    /// Why, for disconnect, ban, role_change and error.
    pub reason: Option<String>,
}

/// Called (from any thread) when the queue goes from empty to non-empty.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// The bounded event queue of one pool.
#[derive(Default)]
#[allow(dead_code, reason = "the draining side is called by the bindings, wired separately")]
pub struct Events {
    queue: Mutex<VecDeque<Event>>,
    pending: AtomicBool,
    dropped: AtomicU64,
    hot: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

#[allow(dead_code, reason = "the draining side is called by the bindings, wired separately")]
impl Events {
    /// Events kept before the oldest is dropped.
    pub const CAPACITY: usize = 10_000;

    /// Queues an event, dropping the oldest one when full.
    pub fn record(&self, kind: EventKind, group: Option<&Arc<str>>, endpoint: Option<&Arc<str>>, reason: Option<String>) {
        let at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let event = Event { kind, at, group: group.cloned(), endpoint: endpoint.cloned(), reason };
        let was_empty = {
            let mut queue = self.queue.lock();
            if queue.len() >= Self::CAPACITY {
                queue.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            queue.push_back(event);
            !self.pending.swap(true, Ordering::Release)
        };
        if was_empty {
            // Cloned out so the callback never runs under our lock.
            let waker = self.waker.lock().clone();
            if let Some(wake) = waker {
                wake();
            }
        }
    }

    /// Whether acquire/release events are recorded.
    pub fn hot(&self) -> bool {
        self.hot.load(Ordering::Relaxed)
    }

    /// Turns recording of acquire/release events on or off (off by default: they are per checkout).
    pub fn set_hot(&self, on: bool) {
        self.hot.store(on, Ordering::Relaxed);
    }

    /// Cheap check for queued events (one atomic load).
    pub fn has_events(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Takes every queued event, oldest first.
    pub fn drain(&self) -> Vec<Event> {
        let mut queue = self.queue.lock();
        self.pending.store(false, Ordering::Release);
        queue.drain(..).collect()
    }

    /// Takes every queued event as a JSON array of
    /// `{type, at, group, endpoint, reason}` objects (`"[]"` when there are none).
    pub fn drain_json(&self) -> String {
        serde_json::to_string(&self.drain()).unwrap_or_else(|_| "[]".into())
    }

    /// Events dropped because the queue was full, since the pool started.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sets (or clears) the callback run when the queue becomes non-empty. It must be cheap and
    /// must not call back into the pool synchronously (e.g. a non-blocking threadsafe function).
    pub fn set_waker(&self, waker: Option<Waker>) {
        *self.waker.lock() = waker;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_drops_oldest_and_counts() {
        let events = Events::default();
        let ep: Arc<str> = Arc::from("e");
        for i in 0..Events::CAPACITY + 5 {
            events.record(EventKind::Error, None, Some(&ep), Some(i.to_string()));
        }
        assert!(events.has_events());
        assert_eq!(events.dropped(), 5);
        let drained = events.drain();
        assert_eq!(drained.len(), Events::CAPACITY);
        assert_eq!(drained[0].reason.as_deref(), Some("5"));
        assert!(!events.has_events());
    }

    #[test]
    fn waker_runs_once_per_batch() {
        let events = Events::default();
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        events.set_waker(Some(Arc::new(move || {
            c.fetch_add(1, Ordering::Relaxed);
        })));
        events.record(EventKind::Connect, None, None, None);
        events.record(EventKind::Connect, None, None, None);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(events.drain_json().starts_with("[{\"type\":\"connect\""));
        events.record(EventKind::Ban, None, None, None);
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }
}
