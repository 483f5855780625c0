//! Who polls a session's connection: its task on the tokio worker, or, while a statement of a
//! quiet pool runs from the JS thread (see `jsloop`), that JS thread's own event loop.
//!
//! tokio-postgres's `Connection` is the future that reads and writes the session's socket. It
//! lives here behind a lock, and exactly one side polls it at a time: the worker task, unless
//! the JS thread has taken it over. Handing it back polls it once more, directly, with the
//! worker task's waker (so the task is woken by what the connection waits for besides the
//! socket); the socket itself stays watched by the JS thread's loop, which wakes the task when
//! it turns readable. The socket is out of tokio's reactor while the JS thread reads it, and
//! back in on the worker's next poll (see `endpoint::connect::Socket`).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
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
    /// While [`ON_JS`]: whether the socket may have something to read (a read that found it
    /// empty clears it until the event loop reports the socket readable again).
    static MAY_READ: Cell<bool> = const { Cell::new(false) };
    /// Set when a direct write found the socket full (the event loop must watch for writable).
    static WANTS_WRITE: Cell<bool> = const { Cell::new(false) };
}

/// Whether the socket calls of this thread are direct (see [`ON_JS`]).
pub(crate) fn on_js() -> bool {
    ON_JS.try_with(Cell::get).unwrap_or(false)
}

/// For a direct read: whether to try one (false when the last one found nothing and the event
/// loop has not said the socket is readable since).
pub(crate) fn may_read() -> bool {
    MAY_READ.try_with(Cell::get).unwrap_or(true)
}

/// A direct read found the socket empty.
pub(crate) fn read_nothing() {
    let _ = MAY_READ.try_with(|r| r.set(false));
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
    /// The JS thread's loop that watches the socket, if one does (set and cleared under
    /// `connection`'s lock; see [`watch_fd`] for what that means for closing the socket).
    watcher: Mutex<Option<Arc<crate::jsloop::Wakeup>>>,
    /// Whether the socket may have something to read for the JS thread (see [`may_read`]).
    may_read: AtomicBool,
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
            watcher: Mutex::new(None),
            may_read: AtomicBool::new(true),
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
        self.poll_connection(&mut connection, cx)
    }

    /// Takes the connection over for the event loop that `watcher` wakes: `None` if it is
    /// taken already, has ended, or another loop watches its socket; otherwise whether that
    /// loop starts watching the socket now (it must open a handle for it).
    pub(crate) fn take(&self, watcher: &Arc<crate::jsloop::Wakeup>) -> Option<bool> {
        let connection = self.connection.lock();
        if connection.is_none() || self.taken.load(Ordering::Acquire) {
            return None;
        }
        let mut current = self.watcher.lock();
        let newly = match current.as_ref() {
            Some(w) if Arc::ptr_eq(w, watcher) => false,
            Some(_) => return None,
            None => {
                *current = Some(watcher.clone());
                true
            }
        };
        self.taken.store(true, Ordering::Release);
        Some(newly)
    }

    /// The event loop says the socket is readable (or in error): the next direct poll reads.
    pub(crate) fn readable(&self) {
        self.may_read.store(true, Ordering::Relaxed);
    }

    /// The socket turned readable while the worker has the connection: the worker task polls
    /// it (the give-back poll did not ask tokio to tell it, see [`Driver::give_back`]).
    pub(crate) fn wake_worker(&self) {
        if let Some(worker) = self.worker.lock().clone() {
            worker.wake();
        }
    }

    /// Polls the taken-over connection from the JS thread, reading and writing directly.
    /// Returns whether it ended, and whether it wants the socket watched for writable.
    pub(crate) fn poll_taken(&self, cx: &mut Context<'_>) -> (bool, bool) {
        let mut connection = self.connection.lock();
        let (ended, wants_write) = self.poll_direct(&mut connection, cx);
        drop(connection);
        if ended {
            // The worker task waits for the connection to end: it has.
            self.wake_worker();
        }
        (ended, wants_write)
    }

    /// Polls the connection reading and writing directly (see [`ON_JS`]); whether it ended,
    /// and whether a write found the socket full.
    fn poll_direct(&self, connection: &mut Option<Drive>, cx: &mut Context<'_>) -> (bool, bool) {
        ON_JS.with(|j| j.set(true));
        MAY_READ.with(|r| r.set(self.may_read.load(Ordering::Relaxed)));
        WANTS_WRITE.with(|w| w.set(false));
        let ended = self.poll_connection(connection, cx).is_ready();
        ON_JS.with(|j| j.set(false));
        self.may_read.store(MAY_READ.with(Cell::get), Ordering::Relaxed);
        (ended, WANTS_WRITE.with(Cell::get))
    }

    /// The watching loop has closed its handle for the socket: the socket is closed now if it
    /// was dropped meanwhile (see [`watch_fd`]).
    pub(crate) fn unwatch(&self) {
        let _connection = self.connection.lock();
        *self.watcher.lock() = None;
        unwatch_fd(self.fd);
    }

    /// Whether the connection ended (a watching loop then closes its handle, see `unwatch`).
    pub(crate) fn ended(&self) -> bool {
        self.connection.lock().is_none()
    }

    /// Gives the connection back to the worker task. Without `wake` (the JS thread's loop still
    /// watches the socket) it is polled once here, directly, with the task's waker: whatever
    /// the connection waits for besides the socket (its requests) wakes the task from now on,
    /// and the socket turning readable wakes the loop, which wakes the task (`wake_worker`);
    /// that saves a read and a wake-up of the worker per statement. With `wake`, or when that
    /// poll's write found the socket full, the task is woken to poll it itself.
    pub(crate) fn give_back(&self, wake: bool) {
        let worker = self.worker.lock().clone();
        let mut connection = self.connection.lock();
        self.taken.store(false, Ordering::Release);
        let Some(worker) = worker else { return };
        if !wake {
            let (ended, wants_write) = self.poll_direct(&mut connection, &mut Context::from_waker(&worker));
            if !ended && !wants_write {
                return;
            }
        }
        drop(connection);
        worker.wake();
    }

    /// Polls the connection (under its lock); an ended one is dropped.
    fn poll_connection(&self, connection: &mut Option<Drive>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(drive) = connection.as_mut() else { return Poll::Ready(()) };
        let polled = drive.as_mut().poll(cx);
        if polled.is_ready() {
            *connection = None;
        }
        polled
    }
}

/// The sockets that a JS thread's loop has a `uv_poll_t` for, and the loop; with the socket
/// itself once the session dropped it.
///
/// A handle names its socket by descriptor, and closing the handle takes that descriptor out of
/// libuv's epoll set. Were the socket closed first, the descriptor could be reused by a socket
/// of Node's own before the handle is closed, and closing the handle would take that one out of
/// the loop: it would never be read again. So a watched socket that is dropped stays open here,
/// and is closed once its loop has closed the handle (see `jsloop::reap`).
#[cfg(unix)]
static WATCHED_FDS: LazyLock<Mutex<Vec<WatchedFd>>> = LazyLock::new(|| Mutex::new(Vec::new()));

#[cfg(unix)]
struct WatchedFd {
    fd: Fd,
    /// The loop that has a handle for it.
    owner: Arc<crate::jsloop::Wakeup>,
    /// The socket, once its session dropped it.
    kept: Option<std::os::fd::OwnedFd>,
}

/// `loop_wakeup`'s loop has opened a handle for `fd`.
#[cfg(unix)]
pub(crate) fn watch_fd(fd: Fd, loop_wakeup: &Arc<crate::jsloop::Wakeup>) {
    WATCHED_FDS.lock().push(WatchedFd { fd, owner: loop_wakeup.clone(), kept: None });
}

/// The loop has closed its handle for `fd`: the socket is closed too if it was dropped.
#[cfg(unix)]
fn unwatch_fd(fd: Fd) {
    let mut watched = WATCHED_FDS.lock();
    if let Some(pos) = watched.iter().position(|w| w.fd == fd) {
        let gone = watched.swap_remove(pos);
        drop(watched);
        drop(gone);
    }
}

/// A session's socket is being dropped: if a loop watches it, it is kept open until the loop
/// has closed its handle (and the loop is asked to); otherwise it is given back to be closed.
#[cfg(unix)]
pub(crate) fn retire_fd(socket: std::os::fd::OwnedFd) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    let mut watched = WATCHED_FDS.lock();
    let Some(entry) = watched.iter_mut().find(|w| w.fd == socket.as_raw_fd() && w.kept.is_none()) else { return Some(socket) };
    entry.kept = Some(socket);
    let owner = entry.owner.clone();
    drop(watched);
    owner.reap_soon();
    None
}

#[cfg(not(unix))]
pub(crate) fn watch_fd(_fd: Fd, _loop_wakeup: &Arc<crate::jsloop::Wakeup>) {}

#[cfg(not(unix))]
fn unwatch_fd(_fd: Fd) {}
