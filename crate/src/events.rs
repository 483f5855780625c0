//! Lifecycle events of a pool (connect, disconnect, ban, role change, …), kept in a bounded
//! queue until JavaScript drains them.
//!
//! Recording never blocks on JavaScript and never grows without bound: past
//! [`Events::CAPACITY`] the oldest event is dropped and counted. Checkouts and releases are
//! not recorded here: they happen on the JavaScript side, which emits their events itself.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EventKind {
    /// A connection was opened.
    Connect,
    /// A connection was closed; `reason` says why (see `DisconnectReason`).
    Disconnect,
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
pub(crate) struct Event {
    /// What happened.
    #[serde(rename = "type")]
    pub(crate) kind: EventKind,
    /// Milliseconds since the Unix epoch.
    pub(crate) at: u64,
    /// Group name, for events of one group's connections.
    pub(crate) group: Option<Arc<str>>,
    /// Endpoint id.
    pub(crate) endpoint: Option<Arc<str>>,
    /// Why, for disconnect, ban, role_change and error.
    pub(crate) reason: Option<String>,
}

/// Called (from any thread) when the queue goes from empty to non-empty.
pub(crate) type Waker = Arc<dyn Fn() + Send + Sync>;

/// The bounded event queue of one pool.
#[derive(Default)]
pub(crate) struct Events {
    queue: Mutex<VecDeque<Event>>,
    pending: AtomicBool,
    dropped: AtomicU64,
    waker: Mutex<Option<Waker>>,
}

impl Events {
    /// Events kept before the oldest is dropped.
    pub(crate) const CAPACITY: usize = 10_000;

    /// Queues an event, dropping the oldest one when full.
    pub(crate) fn record(&self, kind: EventKind, group: Option<&Arc<str>>, endpoint: Option<&Arc<str>>, reason: Option<String>) {
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

    /// Whether events are queued.
    #[cfg(test)]
    pub(crate) fn has_events(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Takes every queued event, oldest first.
    pub(crate) fn drain(&self) -> Vec<Event> {
        let mut queue = self.queue.lock();
        self.pending.store(false, Ordering::Release);
        queue.drain(..).collect()
    }

    /// Takes every queued event as a JSON array of
    /// `{type, at, group, endpoint, reason}` objects (`"[]"` when there are none).
    pub(crate) fn drain_json(&self) -> String {
        serde_json::to_string(&self.drain()).unwrap_or_else(|_| "[]".into())
    }

    /// Events dropped because the queue was full, since the pool started.
    #[cfg(test)]
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sets (or clears) the callback run when the queue becomes non-empty. It must be cheap and
    /// must not call back into the pool synchronously (e.g. a non-blocking threadsafe function).
    pub(crate) fn set_waker(&self, waker: Option<Waker>) {
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
