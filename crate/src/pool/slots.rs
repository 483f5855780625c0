//! A group's capacity: for each endpoint its idle sessions and how many are in use, being
//! opened or being health-checked, plus the FIFO of checkouts waiting for one.
//!
//! Every change goes through one of the named transitions below, which keep `total` (every
//! unit of `connection_count` that is taken, whatever state it is in) right by construction:
//!
//! ```text
//!            reserve_open ──► opening ──opened──► in_use ◄──lend── idle
//!  waiter ◄─ Grant::Open ─ open_granted ┘   └─open_failed        take_back ─┘ (or to a waiter)
//!                                                 retire ─► capacity passes to the first waiter, or is freed
//! ```
//!
//! Nothing here does I/O or knows about sessions: `C` is whatever the group pools, so the
//! bookkeeping is unit-tested (`slots/tests.rs`, including a randomized run against a model).

use std::collections::VecDeque;

use tokio::sync::oneshot;

/// What a waiting checkout is given.
#[derive(Debug)]
pub(crate) enum Grant<C> {
    /// An idle session, already counted as in use.
    Conn(C),
    /// A unit of capacity: the waiter opens a session itself ([`Slots::open_granted`]) or
    /// hands the unit on ([`Slots::pass_capacity`]).
    Open,
    /// The group was closed.
    Closed,
}

#[derive(Debug)]
struct Waiter<C> {
    id: u64,
    tx: oneshot::Sender<Grant<C>>,
    /// Queued on behalf of checkouts that wait (and are counted) in the JS pool object with
    /// this number.
    relayed: Option<u64>,
}

/// One endpoint's share.
#[derive(Debug)]
pub(crate) struct Counts<C> {
    /// Idle sessions, the most recently returned last.
    pub(crate) idle: Vec<C>,
    /// Lent to users.
    pub(crate) in_use: usize,
    /// Being opened.
    pub(crate) opening: usize,
    /// Lent to the health monitor.
    pub(crate) checking: usize,
}

impl<C> Counts<C> {
    /// Sessions of this endpoint in any state.
    pub(crate) fn size(&self) -> usize {
        self.idle.len() + self.in_use + self.opening + self.checking
    }
}

/// Where a session that comes back was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holder {
    /// A user.
    User,
    /// The health monitor.
    Monitor,
}

/// The capacity of one group (see the module docs).
#[derive(Debug)]
pub(crate) struct Slots<C> {
    endpoints: Vec<Counts<C>>,
    total: usize,
    max: usize,
    /// Units granted to waiters (`Grant::Open`) that are not opening yet.
    granted: usize,
    waiters: VecDeque<Waiter<C>>,
    next_id: u64,
    closed: bool,
}

impl<C> Slots<C> {
    /// Empty slots for `endpoints` endpoints and `max` sessions in all.
    pub(crate) fn new(endpoints: usize, max: usize) -> Self {
        Self {
            endpoints: (0..endpoints).map(|_| Counts { idle: Vec::new(), in_use: 0, opening: 0, checking: 0 }).collect(),
            total: 0,
            max,
            granted: 0,
            waiters: VecDeque::new(),
            next_id: 0,
            closed: false,
        }
    }

    /// Endpoint `e`'s share.
    pub(crate) fn at(&self, e: usize) -> &Counts<C> {
        &self.endpoints[e]
    }

    /// Every endpoint's share, in order.
    pub(crate) fn all(&self) -> &[Counts<C>] {
        &self.endpoints
    }

    /// Units of capacity taken.
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// Whether another session may be opened.
    pub(crate) fn can_grow(&self) -> bool {
        self.total < self.max
    }

    /// Checkouts waiting.
    pub(crate) fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// Of the checkouts waiting, those queued on behalf of pool object `caller` (see
    /// [`Slots::enqueue`]).
    pub(crate) fn relayed_waiting(&self, caller: u64) -> usize {
        self.waiters.iter().filter(|w| w.relayed == Some(caller)).count()
    }

    /// Whether the group was closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// A new id, for a waiter or a lease.
    pub(crate) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Takes a new unit of capacity and starts opening it on `e`; `false` at capacity.
    pub(crate) fn reserve_open(&mut self, e: usize) -> bool {
        if self.closed || self.total >= self.max {
            return false;
        }
        self.total += 1;
        self.endpoints[e].opening += 1;
        true
    }

    /// A unit granted to a waiter starts opening on `e`.
    pub(crate) fn open_granted(&mut self, e: usize) {
        self.granted -= 1;
        self.endpoints[e].opening += 1;
    }

    /// A session opened on `e` goes to its opener; `false` (and the unit freed) if the group
    /// was closed meanwhile.
    pub(crate) fn opened(&mut self, e: usize) -> bool {
        self.endpoints[e].opening -= 1;
        if self.closed {
            self.total -= 1;
            return false;
        }
        self.endpoints[e].in_use += 1;
        true
    }

    /// Opening on `e` ended without a session: the unit passes on.
    pub(crate) fn open_failed(&mut self, e: usize) {
        self.endpoints[e].opening -= 1;
        self.free_unit();
    }

    /// Lends the most recently returned idle session of `e` if `fit` accepts it; sessions
    /// `fit` refuses (with a reason) are taken out and returned in `retired`, their units
    /// passed on.
    pub(crate) fn lend<R>(&mut self, e: usize, mut fit: impl FnMut(&C) -> Option<R>, retired: &mut Vec<(C, R)>) -> Option<C> {
        while let Some(conn) = self.endpoints[e].idle.pop() {
            match fit(&conn) {
                None => {
                    self.endpoints[e].in_use += 1;
                    return Some(conn);
                }
                Some(reason) => {
                    retired.push((conn, reason));
                    self.free_unit();
                }
            }
        }
        None
    }

    /// Lends `e`'s most recently returned idle session if `usable` says so, without retiring
    /// anything (the synchronous fast path).
    pub(crate) fn lend_now(&mut self, e: usize, usable: impl Fn(&C) -> bool) -> Option<C> {
        if !self.endpoints[e].idle.last().is_some_and(usable) {
            return None;
        }
        let conn = self.endpoints[e].idle.pop()?;
        self.endpoints[e].in_use += 1;
        Some(conn)
    }

    /// A session of `e` comes back healthy from `holder`: it goes to the first waiter still
    /// waiting, else to the idle list.
    pub(crate) fn take_back(&mut self, e: usize, mut conn: C, holder: Holder) {
        self.release_from(e, holder);
        if self.closed {
            // `close` already answered every waiter; nothing can be lent any more.
            self.total -= 1;
            drop(conn);
            return;
        }
        while let Some(waiter) = self.waiters.pop_front() {
            self.endpoints[e].in_use += 1;
            match waiter.tx.send(Grant::Conn(conn)) {
                Ok(()) => return,
                Err(Grant::Conn(back)) => {
                    self.endpoints[e].in_use -= 1;
                    conn = back;
                }
                // Only a `Conn` was sent.
                Err(_) => return,
            }
        }
        self.endpoints[e].idle.push(conn);
    }

    /// A session of `e` held by `holder` is closed: its unit passes on.
    pub(crate) fn retire(&mut self, e: usize, holder: Holder) {
        self.release_from(e, holder);
        self.free_unit();
    }

    /// A session of `e` held by `holder` is closed and replaced: its unit starts opening on
    /// `to` (nobody is waiting, or it would pass to them instead).
    pub(crate) fn retire_and_replace(&mut self, e: usize, holder: Holder, to: usize) {
        self.release_from(e, holder);
        if self.closed {
            self.total -= 1;
        } else {
            self.endpoints[to].opening += 1;
        }
    }

    /// Takes an idle session off `from` to be closed; its unit starts opening on `to`.
    pub(crate) fn move_idle(&mut self, from: usize, to: usize) -> Option<C> {
        let conn = self.endpoints[from].idle.pop()?;
        self.endpoints[to].opening += 1;
        Some(conn)
    }

    /// Takes out every idle session `drop_it` picks (given the endpoint and the number of
    /// units that would be left); their units pass on.
    pub(crate) fn retire_idle<R>(&mut self, mut drop_it: impl FnMut(usize, &C, usize) -> Option<R>) -> Vec<(C, R)> {
        let mut retired = Vec::new();
        for e in 0..self.endpoints.len() {
            let idle = std::mem::take(&mut self.endpoints[e].idle);
            for conn in idle {
                match drop_it(e, &conn, self.total - retired.len()) {
                    Some(reason) => retired.push((conn, reason)),
                    None => self.endpoints[e].idle.push(conn),
                }
            }
        }
        for _ in 0..retired.len() {
            self.free_unit();
        }
        retired
    }

    /// Lends the health monitor `e`'s longest-idle session.
    pub(crate) fn borrow_oldest(&mut self, e: usize) -> Option<C> {
        if self.closed || self.endpoints[e].idle.is_empty() {
            return None;
        }
        self.endpoints[e].checking += 1;
        Some(self.endpoints[e].idle.remove(0))
    }

    /// Queues a checkout; it is answered through the receiver, oldest first. `relayed` names
    /// the pool object on whose checkouts' behalf it waits: it is served like any other, and
    /// told apart only by [`Slots::relayed_waiting`].
    pub(crate) fn enqueue(&mut self, relayed: Option<u64>) -> (u64, oneshot::Receiver<Grant<C>>) {
        let (tx, rx) = oneshot::channel();
        let id = self.next_id();
        self.waiters.push_back(Waiter { id, tx, relayed });
        (id, rx)
    }

    /// Takes waiter `id` out of the queue; `false` if it was answered already.
    pub(crate) fn dequeue(&mut self, id: u64) -> bool {
        match self.waiters.iter().position(|w| w.id == id) {
            Some(pos) => {
                self.waiters.remove(pos);
                true
            }
            None => false,
        }
    }

    /// A unit granted to a waiter (or otherwise freed) passes to the first waiter still
    /// waiting, or is freed.
    pub(crate) fn pass_capacity(&mut self) {
        self.granted -= 1;
        self.free_unit();
    }

    /// Closes: every waiter hears `Closed`, the idle sessions are returned for closing.
    pub(crate) fn close(&mut self) -> Vec<C> {
        self.closed = true;
        for waiter in self.waiters.drain(..) {
            let _ = waiter.tx.send(Grant::Closed);
        }
        let mut idle = Vec::new();
        for counts in &mut self.endpoints {
            idle.append(&mut counts.idle);
        }
        self.total -= idle.len();
        idle
    }

    fn release_from(&mut self, e: usize, holder: Holder) {
        match holder {
            Holder::User => self.endpoints[e].in_use -= 1,
            Holder::Monitor => self.endpoints[e].checking -= 1,
        }
    }

    /// A unit no longer held: to the first waiter still waiting, else freed.
    fn free_unit(&mut self) {
        if !self.closed {
            while let Some(waiter) = self.waiters.pop_front() {
                if waiter.tx.send(Grant::Open).is_ok() {
                    self.granted += 1;
                    return;
                }
            }
        }
        self.total -= 1;
    }

    #[cfg(test)]
    fn check(&self) {
        let held: usize = self.endpoints.iter().map(Counts::size).sum();
        assert_eq!(self.total, held + self.granted, "every unit is somewhere");
        assert!(self.total <= self.max, "capacity exceeded: {} > {}", self.total, self.max);
        if self.waiters.iter().any(|w| !w.tx.is_closed()) {
            assert_eq!(self.total, self.max, "a checkout waits while capacity is free");
            assert!(self.endpoints.iter().all(|c| c.idle.is_empty()), "a checkout waits while a session is idle");
        }
        if self.closed {
            assert!(self.waiters.is_empty());
            assert!(self.endpoints.iter().all(|c| c.idle.is_empty()));
        }
    }
}

#[cfg(test)]
mod tests;
