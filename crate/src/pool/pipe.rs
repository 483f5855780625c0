//! The order of the statements pipelined on one shared connection, and the time limits that
//! follow from it.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Why a pipelined statement was given up (see [`Pipe::run`]).
pub(crate) enum Late {
    /// It waited behind the statements sent before it for longer than `acquire_timeout`.
    Queued,
    /// It ran longer than this client-side limit.
    Running(Duration),
    /// A statement ahead of it on the connection ran longer than this limit, and the
    /// connection was given up.
    GivenUp(Duration),
    /// The connection was given up before it was sent.
    Unsent,
}

/// The statements pipelined on one connection, in the order they went to its socket. The
/// server runs them in that order, so a statement is the one running once every statement sent
/// before it is done: its clock starts then.
#[derive(Default)]
pub(crate) struct Pipe {
    /// Places of the statements sent and not done yet, oldest first.
    sent: Mutex<(u64, VecDeque<u64>)>,
    moved: Notify,
    /// The `query_timeout` limit (ms) a statement ran past, after which every statement behind
    /// it fails at once (0: none did).
    given_up: AtomicU64,
}

/// A statement's place in its [`Pipe`], given up when it is done (or dropped).
struct Place<'a> {
    pipe: &'a Pipe,
    place: u64,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut sent = self.pipe.sent.lock();
        if let Some(i) = sent.1.iter().position(|&p| p == self.place) {
            sent.1.remove(i);
        }
        drop(sent);
        self.pipe.moved.notify_waiters();
    }
}

impl Pipe {
    fn is_head(&self, place: u64) -> bool {
        self.sent.lock().1.front() == Some(&place)
    }

    pub(super) fn give_up(&self, limit: Duration) {
        self.given_up.store(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1), Ordering::Release);
        self.moved.notify_waiters();
    }

    fn given_up(&self) -> Option<Duration> {
        let ms = self.given_up.load(Ordering::Acquire);
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// Drives `work`, a statement that writes itself to the socket at its first poll: that poll
    /// happens with its place taken under the same lock, so places follow the order on the
    /// wire. It may wait until `queued` for the statements ahead of it, then run within
    /// `running` (none: no limit).
    pub(super) async fn run<F: Future>(&self, work: F, queued: tokio::time::Instant, running: Option<Duration>) -> Result<F::Output, Late> {
        if self.given_up().is_some() {
            return Err(Late::Unsent);
        }
        tokio::pin!(work);
        let (place, first) = std::future::poll_fn(|cx| {
            let mut sent = self.sent.lock();
            let place = sent.0;
            sent.0 += 1;
            sent.1.push_back(place);
            let first = work.as_mut().poll(cx);
            Poll::Ready((place, first))
        })
        .await;
        let _place = Place { pipe: self, place };
        if let Poll::Ready(out) = first {
            return Ok(out);
        }
        loop {
            let moved = self.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            if let Some(limit) = self.given_up() {
                return Err(Late::GivenUp(limit));
            }
            if self.is_head(place) {
                break;
            }
            tokio::select! {
                biased;
                out = &mut work => return Ok(out),
                () = &mut moved => {}
                () = tokio::time::sleep_until(queued) => return Err(Late::Queued),
            }
        }
        match running {
            None => Ok(work.await),
            Some(limit) => tokio::time::timeout(limit, work).await.map_err(|_| Late::Running(limit)),
        }
    }
}
