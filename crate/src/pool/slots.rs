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
//! bookkeeping is unit-tested (`tests` below, including a randomized run against a model).

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
    /// Queued on behalf of checkouts that wait (and are counted) somewhere else.
    relayed: bool,
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

    /// Of the checkouts waiting, those queued with `relayed` (see [`Slots::enqueue`]).
    pub(crate) fn relayed_waiting(&self) -> usize {
        self.waiters.iter().filter(|w| w.relayed).count()
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

    /// Queues a checkout; it is answered through the receiver, oldest first. `relayed` marks
    /// one made on behalf of checkouts that wait elsewhere: it is served like any other, and
    /// told apart only by [`Slots::relayed_waiting`].
    pub(crate) fn enqueue(&mut self, relayed: bool) -> (u64, oneshot::Receiver<Grant<C>>) {
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
mod tests {
    use std::collections::{HashSet, VecDeque};

    use proptest::prelude::*;

    use super::*;

    type Rx = oneshot::Receiver<Grant<u32>>;

    fn grant(rx: &mut Rx) -> Option<Grant<u32>> {
        rx.try_recv().ok()
    }

    #[test]
    fn a_returned_session_goes_to_the_oldest_waiter() {
        let mut slots = Slots::<u32>::new(1, 1);
        assert!(slots.reserve_open(0));
        assert!(slots.opened(0));
        let (_, mut first) = slots.enqueue(false);
        let (_, mut second) = slots.enqueue(false);
        slots.take_back(0, 7, Holder::User);
        assert!(matches!(grant(&mut first), Some(Grant::Conn(7))));
        assert!(grant(&mut second).is_none());
        slots.check();
    }

    #[test]
    fn relayed_waiters_are_served_in_turn_and_counted_apart() {
        let mut slots = Slots::<u32>::new(1, 1);
        assert!(slots.reserve_open(0));
        assert!(slots.opened(0));
        let (_, mut relayed) = slots.enqueue(true);
        let (_, mut own) = slots.enqueue(false);
        assert_eq!((slots.waiting(), slots.relayed_waiting()), (2, 1));
        slots.take_back(0, 7, Holder::User);
        assert!(matches!(grant(&mut relayed), Some(Grant::Conn(7))));
        assert!(grant(&mut own).is_none());
        assert_eq!((slots.waiting(), slots.relayed_waiting()), (1, 0));
        slots.check();
    }

    #[test]
    fn a_waiter_that_gave_up_is_skipped() {
        let mut slots = Slots::<u32>::new(1, 1);
        assert!(slots.reserve_open(0));
        assert!(slots.opened(0));
        let (_, gone) = slots.enqueue(false);
        drop(gone);
        let (_, mut next) = slots.enqueue(false);
        slots.take_back(0, 7, Holder::User);
        assert!(matches!(grant(&mut next), Some(Grant::Conn(7))));
        assert_eq!(slots.at(0).in_use, 1);
        slots.check();
    }

    #[test]
    fn a_retired_session_passes_its_unit_to_a_waiter() {
        let mut slots = Slots::<u32>::new(2, 1);
        assert!(slots.reserve_open(0));
        assert!(slots.opened(0));
        assert!(!slots.reserve_open(1), "at capacity");
        let (_, mut waiter) = slots.enqueue(false);
        slots.retire(0, Holder::User);
        assert!(matches!(grant(&mut waiter), Some(Grant::Open)));
        assert_eq!(slots.total(), 1, "the unit moved, it was not freed");
        slots.open_granted(1);
        assert!(slots.opened(1));
        slots.check();
    }

    #[test]
    fn unfit_idle_sessions_are_retired_on_the_way() {
        let mut slots = Slots::<u32>::new(1, 3);
        for id in 1..=3 {
            assert!(slots.reserve_open(0));
            assert!(slots.opened(0));
            slots.take_back(0, id, Holder::User);
        }
        let mut retired = Vec::new();
        let lent = slots.lend(0, |&c| (c > 1).then_some("stale"), &mut retired);
        assert_eq!(lent, Some(1));
        assert_eq!(retired.len(), 2);
        assert_eq!(slots.total(), 1);
        slots.check();
    }

    #[test]
    fn close_answers_every_waiter_and_frees_what_comes_back() {
        let mut slots = Slots::<u32>::new(1, 2);
        assert!(slots.reserve_open(0));
        assert!(slots.opened(0));
        assert!(slots.reserve_open(0));
        let (_, mut waiter) = slots.enqueue(false);
        assert!(slots.close().is_empty());
        assert!(matches!(grant(&mut waiter), Some(Grant::Closed)));
        assert!(!slots.opened(0), "a session opened after close is not lent");
        slots.take_back(0, 1, Holder::User);
        assert_eq!(slots.total(), 0);
        slots.check();
    }

    /// One step of a random run.
    #[derive(Debug, Clone)]
    enum Step {
        Reserve(usize),
        Open(bool),
        Lend(usize),
        Return(bool),
        Borrow(usize),
        ReturnChecked(bool),
        Wait,
        GiveUp,
        UseGrant(usize),
        Close,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..3usize).prop_map(Step::Reserve),
            any::<bool>().prop_map(Step::Open),
            (0..3usize).prop_map(Step::Lend),
            any::<bool>().prop_map(Step::Return),
            (0..3usize).prop_map(Step::Borrow),
            any::<bool>().prop_map(Step::ReturnChecked),
            Just(Step::Wait),
            Just(Step::GiveUp),
            (0..3usize).prop_map(Step::UseGrant),
            Just(Step::Close),
        ]
    }

    /// What the users of the slots hold, and what a model of the queue expects.
    #[derive(Default)]
    struct World {
        opening: Vec<usize>,
        lent: Vec<(usize, u32)>,
        checking: Vec<(usize, u32)>,
        /// Waiters still waiting, oldest first, with their receivers.
        waiting: VecDeque<(u64, Rx)>,
        /// Grants of capacity received, not used yet.
        grants: usize,
        next_conn: u32,
        ever_opened: HashSet<u32>,
    }

    impl World {
        /// Takes the answers that arrived. They must have gone to the oldest waiters (FIFO):
        /// the answered ones are a prefix of the queue.
        fn collect(&mut self, slots: &Slots<u32>) {
            let answers: Vec<Option<Grant<u32>>> = self.waiting.iter_mut().map(|(_, rx)| grant(rx)).collect();
            let answered = answers.iter().take_while(|a| a.is_some()).count();
            assert!(answers[answered..].iter().all(Option::is_none), "a later waiter was answered before an earlier one");
            for answer in answers.into_iter().flatten() {
                self.waiting.pop_front();
                match answer {
                    Grant::Conn(c) => {
                        assert!(!self.lent.iter().any(|&(_, l)| l == c), "session {c} lent twice");
                        self.lent.push(((c % 3) as usize, c));
                    }
                    Grant::Open => self.grants += 1,
                    Grant::Closed => assert!(slots.is_closed(), "a waiter was told closed on an open group"),
                }
            }
        }
    }

    fn run(steps: Vec<Step>) {
        let mut slots = Slots::<u32>::new(3, 4);
        let mut w = World::default();
        for step in steps {
            match step {
                Step::Reserve(e) => {
                    if slots.reserve_open(e) {
                        w.opening.push(e);
                    }
                }
                Step::Open(ok) => {
                    if let Some(e) = w.opening.pop() {
                        if ok {
                            if slots.opened(e) {
                                w.next_conn += 1;
                                let c = w.next_conn * 3 + e as u32;
                                assert!(w.ever_opened.insert(c));
                                w.lent.push((e, c));
                            }
                        } else {
                            slots.open_failed(e);
                        }
                    }
                }
                Step::Lend(e) => {
                    let mut retired = Vec::new();
                    if let Some(c) = slots.lend(e, |_| None::<()>, &mut retired) {
                        assert!(!w.lent.iter().any(|&(_, l)| l == c), "session {c} lent twice");
                        w.lent.push((e, c));
                    }
                }
                Step::Return(healthy) => {
                    if let Some((e, c)) = w.lent.pop() {
                        if healthy {
                            slots.take_back(e, c, Holder::User);
                        } else {
                            slots.retire(e, Holder::User);
                        }
                    }
                }
                Step::Borrow(e) => {
                    if let Some(c) = slots.borrow_oldest(e) {
                        w.checking.push((e, c));
                    }
                }
                Step::ReturnChecked(healthy) => {
                    if let Some((e, c)) = w.checking.pop() {
                        if healthy {
                            slots.take_back(e, c, Holder::Monitor);
                        } else {
                            slots.retire(e, Holder::Monitor);
                        }
                    }
                }
                Step::Wait => {
                    // As the group plans a checkout: wait only when nothing is idle or free.
                    if !slots.is_closed() && !slots.can_grow() && slots.all().iter().all(|c| c.idle.is_empty()) {
                        w.waiting.push_back(slots.enqueue(false));
                    }
                }
                Step::GiveUp => {
                    if let Some((id, mut rx)) = w.waiting.pop_front() {
                        if !slots.dequeue(id) {
                            // Answered meanwhile: the answer must be taken over, not lost.
                            match rx.try_recv() {
                                Ok(Grant::Conn(c)) => slots.take_back((c % 3) as usize, c, Holder::User),
                                Ok(Grant::Open) => slots.pass_capacity(),
                                Ok(Grant::Closed) | Err(_) => {}
                            }
                        }
                    }
                }
                Step::UseGrant(e) => {
                    if w.grants > 0 {
                        w.grants -= 1;
                        slots.open_granted(e);
                        w.opening.push(e);
                    }
                }
                Step::Close => {
                    slots.close();
                }
            }
            w.collect(&slots);
            slots.check();
        }
        // Everything comes back: nothing is left taken, and every waiter got an answer.
        slots.close();
        w.collect(&slots);
        for e in w.opening.drain(..) {
            assert!(!slots.opened(e));
        }
        for _ in 0..w.grants {
            slots.open_granted(0);
            assert!(!slots.opened(0));
        }
        for (e, c) in w.lent.drain(..) {
            slots.take_back(e, c, Holder::User);
        }
        for (e, c) in w.checking.drain(..) {
            slots.take_back(e, c, Holder::Monitor);
        }
        assert!(w.waiting.is_empty(), "a waiter was never answered");
        assert_eq!(slots.total(), 0);
        slots.check();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn random_runs_keep_the_books(steps in proptest::collection::vec(step(), 1..120)) {
            run(steps);
        }
    }
}
