//! The bookkeeping of [`Slots`] case by case, and a randomized run against a model of the
//! queue that checks the invariants after every step.

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
    let (_, mut first) = slots.enqueue(None);
    let (_, mut second) = slots.enqueue(None);
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
    let (_, mut relayed) = slots.enqueue(Some(7));
    let (_, mut own) = slots.enqueue(None);
    assert_eq!((slots.waiting(), slots.relayed_waiting(7), slots.relayed_waiting(8)), (2, 1, 0));
    slots.take_back(0, 7, Holder::User);
    assert!(matches!(grant(&mut relayed), Some(Grant::Conn(7))));
    assert!(grant(&mut own).is_none());
    assert_eq!((slots.waiting(), slots.relayed_waiting(7), slots.relayed_waiting(8)), (1, 0, 0));
    slots.check();
}

#[test]
fn a_waiter_that_gave_up_is_skipped() {
    let mut slots = Slots::<u32>::new(1, 1);
    assert!(slots.reserve_open(0));
    assert!(slots.opened(0));
    let (_, gone) = slots.enqueue(None);
    drop(gone);
    let (_, mut next) = slots.enqueue(None);
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
    let (_, mut waiter) = slots.enqueue(None);
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
    let (_, mut waiter) = slots.enqueue(None);
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
                    w.waiting.push_back(slots.enqueue(None));
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
