//! Who polls a session's connection: its task on the tokio worker, or, while a statement of a
//! quiet pool runs from the JS thread (see `jsloop`), that JS thread's own event loop.
//!
//! tokio-postgres's `Connection` is the future that reads and writes the session's socket. It
//! lives here behind a lock, and exactly one side polls it at a time: the worker task, unless
//! the JS thread has taken it over. Handing it back wakes the worker task, which polls it again
//! and so registers its own wakers everywhere the JS thread's had been.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

type Drive = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A session's socket, for the JS thread's event loop to watch (nothing to watch elsewhere).
#[cfg(unix)]
pub(crate) type Fd = std::os::fd::RawFd;
#[cfg(not(unix))]
pub(crate) type Fd = ();

thread_local! {
    /// Set while this thread polls a connection it has taken over from the worker: the socket
    /// is then read and written directly, and readiness comes from the JS thread's event loop.
    static ON_JS: Cell<bool> = const { Cell::new(false) };
    /// Set when a direct write found the socket full (the event loop must watch for writable).
    static WANTS_WRITE: Cell<bool> = const { Cell::new(false) };
}

/// Whether the socket calls of this thread are direct (see [`ON_JS`]).
pub(crate) fn on_js() -> bool {
    ON_JS.try_with(Cell::get).unwrap_or(false)
}

/// A direct write found the socket full.
pub(crate) fn wants_write() {
    let _ = WANTS_WRITE.try_with(|w| w.set(true));
}

/// A session's connection future and which side polls it.
pub(crate) struct Driver {
    /// `None` once the connection has ended.
    connection: Mutex<Option<Drive>>,
    /// Set and cleared under `connection`'s lock.
    taken: AtomicBool,
    /// The worker task's waker, to hand the connection back.
    worker: Mutex<Option<Waker>>,
    /// The socket, for the JS thread's event loop to watch.
    pub(crate) fd: Fd,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("taken", &self.taken.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

impl Driver {
    /// Starts driving `connection` from a worker task.
    pub(crate) fn spawn(connection: impl Future<Output = ()> + Send + 'static, fd: Fd) -> Arc<Self> {
        let driver = Arc::new(Self {
            connection: Mutex::new(Some(Box::pin(connection))),
            taken: AtomicBool::new(false),
            worker: Mutex::new(None),
            fd,
        });
        let polled = driver.clone();
        crate::rt::spawn(std::future::poll_fn(move |cx| polled.poll_worker(cx)));
        driver
    }

    fn poll_worker(&self, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut worker = self.worker.lock();
            if !worker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *worker = Some(cx.waker().clone());
            }
        }
        let mut connection = self.connection.lock();
        if self.taken.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        poll_connection(&mut connection, cx)
    }

    /// Takes the connection over for the calling thread's event loop; false if it is taken
    /// already or has ended.
    pub(crate) fn take(&self) -> bool {
        let connection = self.connection.lock();
        if connection.is_none() || self.taken.load(Ordering::Acquire) {
            return false;
        }
        self.taken.store(true, Ordering::Release);
        true
    }

    /// Polls the taken-over connection from the JS thread, reading and writing directly.
    /// Returns whether it ended, and whether it wants the socket watched for writable.
    pub(crate) fn poll_taken(&self, cx: &mut Context<'_>) -> (bool, bool) {
        let mut connection = self.connection.lock();
        ON_JS.with(|j| j.set(true));
        WANTS_WRITE.with(|w| w.set(false));
        let ended = poll_connection(&mut connection, cx).is_ready();
        ON_JS.with(|j| j.set(false));
        (ended, WANTS_WRITE.with(Cell::get))
    }

    /// Gives the connection back to the worker task: polled once here with the task's waker, so
    /// that whatever the connection waits for wakes the task from now on (instead of a wake-up
    /// of the worker for that, a cross-thread hop per statement). With `wake`, the task is woken
    /// to poll it itself (where this thread may not poll: the environment's teardown).
    pub(crate) fn give_back(&self, wake: bool) {
        let worker = self.worker.lock().clone();
        let mut connection = self.connection.lock();
        self.taken.store(false, Ordering::Release);
        match worker {
            Some(worker) if !wake => {
                let _ = poll_connection(&mut connection, &mut Context::from_waker(&worker));
            }
            Some(worker) => {
                drop(connection);
                worker.wake();
            }
            None => {}
        }
    }
}

fn poll_connection(connection: &mut Option<Drive>, cx: &mut Context<'_>) -> Poll<()> {
    let Some(drive) = connection.as_mut() else { return Poll::Ready(()) };
    let polled = drive.as_mut().poll(cx);
    if polled.is_ready() {
        *connection = None;
    }
    polled
}
