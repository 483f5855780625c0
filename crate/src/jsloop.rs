//! The JS-thread fast path: while a pool object has nothing else in flight, its next one-shot
//! statement runs on the calling thread's own event loop instead of the tokio worker.
//!
//! A round trip through the worker crosses two thread hand-offs (JS → worker → JS); at
//! concurrency 1 those cost more than the round trip itself (`npm run benchmark:floor`). Here
//! the statement's future is polled on the JS thread, and the session it gets is taken over
//! from its worker task for the statement (see `driver`): the request is written from the JS
//! thread, libuv watches the socket (`uv_poll`), and the answer is read and encoded there.
//! A session's handle lives from its first statement here until its connection ends, started
//! while the session is taken over and stopped once the worker reads the socket again.
//! Anything that wakes the statement from another thread (a timer, a connection opened for it,
//! a pipelined neighbour's answer read by the worker) reaches the loop through a `uv_async`.
//! Under load nothing changes: a statement submitted while others are in flight goes to the
//! worker as before, so no protocol work moves onto a busy event loop.
//!
//! The handles belong to the JS environment: its async cleanup hook gives every taken session
//! back, drops what still runs here, and closes the handles before Node closes the loop.

#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::ffi::{c_int, c_void};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Wake, Waker};

use napi::{sys, Env};
use parking_lot::Mutex;

use crate::driver::Driver;

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

type PollCallback = unsafe extern "C" fn(*mut c_void, c_int, c_int);
type HandleCallback = unsafe extern "C" fn(*mut c_void);

/// The libuv functions used here, looked up in the process at first use instead of linked: Node
/// exports them, but a binary without them (`cargo test`'s, a host that does not export libuv)
/// must still load the addon, and then simply has no fast path.
struct Uv {
    poll_init: PollInit,
    poll_start: PollStart,
    poll_stop: HandleCall,
    async_init: AsyncInit,
    async_send: HandleCall,
    close: Close,
    unref: Unref,
}

type PollInit = unsafe extern "C" fn(*mut c_void, *mut c_void, c_int) -> c_int;
type PollStart = unsafe extern "C" fn(*mut c_void, c_int, PollCallback) -> c_int;
type HandleCall = unsafe extern "C" fn(*mut c_void) -> c_int;
type AsyncInit = unsafe extern "C" fn(*mut c_void, *mut c_void, HandleCallback) -> c_int;
type Close = unsafe extern "C" fn(*mut c_void, HandleCallback);
type Unref = unsafe extern "C" fn(*mut c_void);

#[cfg(unix)]
static UV: LazyLock<Option<Uv>> = LazyLock::new(|| {
    let find = |name: &std::ffi::CStr| {
        // SAFETY: dlsym with RTLD_DEFAULT only reads the process's symbol tables.
        let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        (!found.is_null()).then_some(found)
    };
    // SAFETY: each symbol is libuv's function of that name, whose signature (libuv 1.x) is the
    // field's type.
    unsafe {
        Some(Uv {
            poll_init: std::mem::transmute::<*mut c_void, PollInit>(find(c"uv_poll_init")?),
            poll_start: std::mem::transmute::<*mut c_void, PollStart>(find(c"uv_poll_start")?),
            poll_stop: std::mem::transmute::<*mut c_void, HandleCall>(find(c"uv_poll_stop")?),
            async_init: std::mem::transmute::<*mut c_void, AsyncInit>(find(c"uv_async_init")?),
            async_send: std::mem::transmute::<*mut c_void, HandleCall>(find(c"uv_async_send")?),
            close: std::mem::transmute::<*mut c_void, Close>(find(c"uv_close")?),
            unref: std::mem::transmute::<*mut c_void, Unref>(find(c"uv_unref")?),
        })
    }
});

#[cfg(not(unix))]
static UV: LazyLock<Option<Uv>> = LazyLock::new(|| None);

// Callers hold a loop state, which exists only when UV was found (see `state`); without it
// these do nothing and report failure.
unsafe fn uv_poll_init(event_loop: *mut c_void, handle: *mut c_void, fd: crate::driver::Fd) -> c_int {
    #[cfg(unix)]
    if let Some(uv) = UV.as_ref() {
        return unsafe { (uv.poll_init)(event_loop, handle, fd) };
    }
    let _ = (event_loop, handle, fd);
    -1
}

unsafe fn uv_poll_start(handle: *mut c_void, events: c_int, callback: PollCallback) -> c_int {
    UV.as_ref().map_or(-1, |uv| unsafe { (uv.poll_start)(handle, events, callback) })
}

unsafe fn uv_poll_stop(handle: *mut c_void) -> c_int {
    UV.as_ref().map_or(-1, |uv| unsafe { (uv.poll_stop)(handle) })
}

unsafe fn uv_async_init(event_loop: *mut c_void, handle: *mut c_void, callback: HandleCallback) -> c_int {
    UV.as_ref().map_or(-1, |uv| unsafe { (uv.async_init)(event_loop, handle, callback) })
}

unsafe fn uv_async_send(handle: *mut c_void) -> c_int {
    UV.as_ref().map_or(-1, |uv| unsafe { (uv.async_send)(handle) })
}

unsafe fn uv_close(handle: *mut c_void, callback: HandleCallback) {
    if let Some(uv) = UV.as_ref() {
        unsafe { (uv.close)(handle, callback) }
    }
}

unsafe fn uv_unref(handle: *mut c_void) {
    if let Some(uv) = UV.as_ref() {
        unsafe { (uv.unref)(handle) }
    }
}

const UV_READABLE: c_int = 1;
const UV_WRITABLE: c_int = 2;
/// Room for a `uv_poll_t` or `uv_async_t` (at most 160 bytes on 64-bit platforms, in libuv 1.x).
const HANDLE_WORDS: usize = 40;

/// `PGDBPOOL_JS_DRIVE=off` in the environment: every statement goes to the worker.
static OFF: LazyLock<bool> = LazyLock::new(|| std::env::var("PGDBPOOL_JS_DRIVE").is_ok_and(|v| v.eq_ignore_ascii_case("off")));

/// A libuv handle's memory; freed by its close callback.
fn new_handle() -> *mut c_void {
    Box::into_raw(Box::new([0u64; HANDLE_WORDS])).cast()
}

/// The close callback of every handle here.
unsafe extern "C" fn free_handle(handle: *mut c_void) {
    drop(unsafe { Box::from_raw(handle.cast::<[u64; HANDLE_WORDS]>()) });
    let _ = OPEN_HANDLES.try_with(|c| c.set(c.get().saturating_sub(1)));
    finish_cleanup_if_done();
}

/// The wake-up of one loop from anywhere: what the wakers of its tasks and of its taken
/// sessions' connections do.
pub(crate) struct Wakeup {
    woken: AtomicBool,
    /// A task of this loop was woken (or is new): the next drive polls the tasks.
    tasks_due: AtomicBool,
    /// A taken session's connection was woken, or its socket turned readable: the next drive
    /// polls the taken connections.
    connections_due: AtomicBool,
    /// The loop's `uv_async_t`, null once it is closed.
    handle: Mutex<SendPtr>,
    /// Set when the connection of a session whose socket the loop watches ended: the loop
    /// closes its handle for the socket, and then the socket (see [`reap`]).
    reap: AtomicBool,
}

impl Wakeup {
    /// Asks the loop to let go of the sockets of ended connections.
    pub(crate) fn reap_soon(&self) {
        self.reap.store(true, Ordering::Release);
        self.notify();
    }

    fn notify(&self) {
        self.woken.store(true, Ordering::Release);
        // The loop that is polling right now sees the flag before it stops.
        if DRIVING.try_with(Cell::get).is_ok_and(|d| d == std::ptr::from_ref(self) as usize) {
            return;
        }
        let handle = self.handle.lock();
        if !handle.0.is_null() {
            unsafe { uv_async_send(handle.0) };
        }
    }
}

struct SendPtr(*mut c_void);
// SAFETY: only passed to uv_async_send, which any thread may call while the handle is open
// (the mutex keeps it from being closed meanwhile).
unsafe impl Send for SendPtr {}

/// The waker of one side of a loop: its tasks, or the connections it has taken over.
struct SideWake {
    wakeup: Arc<Wakeup>,
    connections: bool,
}

impl Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let due = if self.connections { &self.wakeup.connections_due } else { &self.wakeup.tasks_due };
        due.store(true, Ordering::Release);
        self.wakeup.notify();
    }
}

/// A session whose socket this loop watches, from the first statement of the loop that took it
/// over until its connection ends: opening and closing a `uv_poll_t` per statement cost 5
/// `epoll_ctl` and an `ioctl`. The handle is started while the session is taken over, and
/// stopped when the socket turns readable while it is not (the worker reads it then).
struct Watch {
    driver: Arc<Driver>,
    poll: *mut c_void,
    started: bool,
    writable: bool,
    taken: bool,
}

/// One JS thread's loop state.
struct LoopState {
    uv_loop: *mut c_void,
    env: sys::napi_env,
    /// For the callback scope the deferred wake-ups run in (so their continuations run then).
    async_context: sys::napi_async_context,
    wakeup: Arc<Wakeup>,
    task_waker: Waker,
    connection_waker: Waker,
    tasks: RefCell<Vec<Task>>,
    watched: RefCell<Vec<Watch>>,
    driving: Cell<bool>,
}

thread_local! {
    static LOOP: RefCell<Option<Rc<LoopState>>> = const { RefCell::new(None) };
    /// While a drive that a libuv callback started polls: its environment, whose cores' wake-ups
    /// wait in `DEFERRED` to be called directly when it ends.
    static DEFER: Cell<usize> = const { Cell::new(0) };
    static DEFERRED: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    /// The `Wakeup` (as an address) of the loop this thread is polling now, or 0.
    static DRIVING: Cell<usize> = const { Cell::new(0) };
    /// Handles opened here whose close callbacks have not run yet.
    static OPEN_HANDLES: Cell<usize> = const { Cell::new(0) };
    /// The environment's async cleanup hook while it waits for them (teardown under way).
    static CLEANUP: Cell<sys::napi_async_cleanup_hook_handle> = const { Cell::new(std::ptr::null_mut()) };
}

/// Statements whose session a JS thread's loop took over, since the process started.
static DRIVEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many statements ran on a JS thread's loop so far.
pub(crate) fn driven() -> u64 {
    DRIVEN.load(Ordering::Relaxed)
}

/// Whether this thread is polling its loop (so a statement it polls may take its session over).
pub(crate) fn driving() -> bool {
    DRIVING.try_with(Cell::get).is_ok_and(|d| d != 0)
}

/// Runs `task` on this JS thread's loop if the loop has nothing else in flight; gives it back
/// otherwise (the caller spawns it on the worker).
pub(crate) fn try_run(env: &Env, task: Task) -> Result<(), Task> {
    if *OFF {
        return Err(task);
    }
    let Some(state) = state(env) else { return Err(task) };
    if state.driving.get() || !state.tasks.borrow().is_empty() {
        return Err(task);
    }
    state.tasks.borrow_mut().push(task);
    state.wakeup.tasks_due.store(true, Ordering::Release);
    drive(&state);
    Ok(())
}

/// This thread's loop, if it is set up (and the thread is not being torn down).
fn current() -> Option<Rc<LoopState>> {
    LOOP.try_with(|l| l.borrow().clone()).ok().flatten()
}

/// This thread's loop, set up on first use.
fn state(env: &Env) -> Option<Rc<LoopState>> {
    if let Some(state) = LOOP.with(|l| l.borrow().clone()) {
        return Some(state);
    }
    if !CLEANUP.with(Cell::get).is_null() || UV.is_none() {
        return None;
    }
    let mut uv_loop = std::ptr::null_mut();
    if unsafe { sys::napi_get_uv_event_loop(env.raw(), &mut uv_loop) } != sys::Status::napi_ok || uv_loop.is_null() {
        return None;
    }
    let uv_loop = uv_loop.cast::<c_void>();
    let handle = new_handle();
    if unsafe { uv_async_init(uv_loop, handle, on_async) } != 0 {
        drop(unsafe { Box::from_raw(handle.cast::<[u64; HANDLE_WORDS]>()) });
        return None;
    }
    unsafe { uv_unref(handle) };
    OPEN_HANDLES.with(|c| c.set(c.get() + 1));
    let mut hook = std::ptr::null_mut();
    if unsafe { sys::napi_add_async_cleanup_hook(env.raw(), Some(cleanup), std::ptr::null_mut(), &mut hook) } != sys::Status::napi_ok {
        unsafe { uv_close(handle, free_handle) };
        return None;
    }
    let wakeup = Arc::new(Wakeup {
        woken: AtomicBool::new(false),
        tasks_due: AtomicBool::new(false),
        connections_due: AtomicBool::new(false),
        handle: Mutex::new(SendPtr(handle)),
        reap: AtomicBool::new(false),
    });
    let mut async_context = std::ptr::null_mut();
    unsafe {
        let mut name = std::ptr::null_mut();
        sys::napi_create_string_utf8(env.raw(), c"pgdbpool".as_ptr(), 8, &mut name);
        sys::napi_async_init(env.raw(), std::ptr::null_mut(), name, &mut async_context);
    }
    let state = Rc::new(LoopState {
        uv_loop,
        env: env.raw(),
        async_context,
        task_waker: Waker::from(Arc::new(SideWake { wakeup: wakeup.clone(), connections: false })),
        connection_waker: Waker::from(Arc::new(SideWake { wakeup: wakeup.clone(), connections: true })),
        wakeup,
        tasks: RefCell::new(Vec::new()),
        watched: RefCell::new(Vec::new()),
        driving: Cell::new(false),
    });
    LOOP.with(|l| *l.borrow_mut() = Some(state.clone()));
    Some(state)
}

unsafe extern "C" fn on_async(_handle: *mut c_void) {
    drive_current();
}

unsafe extern "C" fn on_poll(handle: *mut c_void, _status: c_int, _events: c_int) {
    let Some(state) = current() else { return };
    {
        let mut watched = state.watched.borrow_mut();
        let Some(watch) = watched.iter_mut().find(|w| w.poll == handle) else { return };
        if !watch.taken {
            // Readable while the worker has it: the worker reads it; this loop stops looking.
            unsafe { uv_poll_stop(handle) };
            watch.started = false;
            watch.driver.readable();
            watch.driver.wake_worker();
            return;
        }
        // Readable or in error: the next poll reads (and so sees the error).
        watch.driver.readable();
        state.wakeup.connections_due.store(true, Ordering::Release);
    }
    drive_current();
}

/// A drive started by libuv: the wake-ups of this environment's cores it causes are called
/// directly at its end, instead of through their threadsafe functions (a `uv_async` and a turn
/// of the loop later).
fn drive_current() {
    let state = current();
    if let Some(state) = state {
        if state.driving.get() {
            return;
        }
        DEFER.with(|d| d.set(state.env as usize));
        drive(&state);
        DEFER.with(|d| d.set(0));
        call_deferred(&state);
    }
}

/// Queues the call of `function` (a reference in `env`) for the end of the current drive, if
/// a drive of `env`'s loop started by libuv is polling on this thread.
pub(crate) fn defer_call(env: usize, function: usize) -> bool {
    if env == 0 || DEFER.try_with(Cell::get).ok() != Some(env) {
        return false;
    }
    DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        if !d.contains(&function) {
            d.push(function);
        }
    });
    true
}

fn call_deferred(state: &LoopState) {
    let functions = DEFERRED.with(|d| std::mem::take(&mut *d.borrow_mut()));
    if functions.is_empty() {
        return;
    }
    let env = state.env;
    unsafe {
        let mut handles = std::ptr::null_mut();
        sys::napi_open_handle_scope(env, &mut handles);
        // Every function is fetched before any runs: a finalizer that runs meanwhile may delete
        // a reference, not the value held here.
        let values: Vec<sys::napi_value> = functions
            .iter()
            .filter_map(|&r| {
                let mut value = std::ptr::null_mut();
                (sys::napi_get_reference_value(env, r as sys::napi_ref, &mut value) == sys::Status::napi_ok && !value.is_null())
                    .then_some(value)
            })
            .collect();
        let mut resource = std::ptr::null_mut();
        sys::napi_create_object(env, &mut resource);
        let mut scope = std::ptr::null_mut();
        sys::napi_open_callback_scope(env, resource, state.async_context, &mut scope);
        let mut global = std::ptr::null_mut();
        sys::napi_get_global(env, &mut global);
        for value in values {
            let mut out = std::ptr::null_mut();
            if sys::napi_call_function(env, global, value, 0, std::ptr::null(), &mut out) == sys::Status::napi_pending_exception {
                // As a threadsafe function's call would: an uncaught exception of the process.
                let mut error = std::ptr::null_mut();
                sys::napi_get_and_clear_last_exception(env, &mut error);
                sys::napi_fatal_exception(env, error);
            }
        }
        // Closing the outermost scope runs the microtasks: the callers' next statements.
        sys::napi_close_callback_scope(env, scope);
        sys::napi_close_handle_scope(env, handles);
    }
}

/// A reference to `function` (in `env`) for [`defer_call`]; 0 when none could be made.
pub(crate) fn function_ref(env: &Env, function: sys::napi_value) -> usize {
    let mut reference = std::ptr::null_mut();
    if unsafe { sys::napi_create_reference(env.raw(), function, 1, &mut reference) } != sys::Status::napi_ok {
        return 0;
    }
    reference as usize
}

/// Deletes a reference made by [`function_ref`] (on its environment's thread).
pub(crate) fn delete_function_ref(env: usize, reference: usize) {
    if env != 0 && reference != 0 {
        unsafe { sys::napi_delete_reference(env as sys::napi_env, reference as sys::napi_ref) };
    }
}

/// Polls this loop's tasks and taken sessions until nothing is left to do for now.
fn drive(state: &Rc<LoopState>) {
    if state.driving.replace(true) {
        return;
    }
    let outer = DRIVING.with(|d| d.replace(Arc::as_ptr(&state.wakeup) as usize));
    crate::rt::within(|| poll_until_quiet(state));
    DRIVING.with(|d| d.set(outer));
    state.driving.set(false);
}

/// Polls what was woken (a statement's future is deep, and polling it or a connection for
/// nothing was a good part of a lone statement's time here) until nothing is.
fn poll_until_quiet(state: &LoopState) {
    let mut tasks_cx = Context::from_waker(&state.task_waker);
    let mut connections_cx = Context::from_waker(&state.connection_waker);
    loop {
        reap(state);
        state.wakeup.woken.store(false, Ordering::Release);
        if state.wakeup.tasks_due.swap(false, Ordering::AcqRel) {
            // Taken out while they are polled, and put back with their room (no list per drive).
            let mut tasks = std::mem::take(&mut *state.tasks.borrow_mut());
            tasks.retain_mut(|task| task.as_mut().poll(&mut tasks_cx).is_pending());
            let mut current = state.tasks.borrow_mut();
            if current.is_empty() {
                *current = tasks;
            } else {
                current.extend(tasks);
            }
        }
        if state.wakeup.connections_due.swap(false, Ordering::AcqRel) {
            poll_taken(state, &mut connections_cx);
        }
        if !state.wakeup.woken.load(Ordering::Acquire) {
            return;
        }
    }
}

/// Polls every session this loop has taken over (an ended one is reaped, see [`reap`]).
fn poll_taken(state: &LoopState, cx: &mut Context<'_>) {
    let mut next = 0;
    loop {
        // By position, the list borrowed only between polls: no list is built per drive.
        let driver = {
            let watched = state.watched.borrow();
            let Some(offset) = watched.iter().skip(next).position(|w| w.taken) else { return };
            next += offset + 1;
            watched[next - 1].driver.clone()
        };
        let (ended, wants_write) = driver.poll_taken(cx);
        if ended {
            continue;
        }
        let mut watched = state.watched.borrow_mut();
        let Some(watch) = watched.iter_mut().find(|w| Arc::ptr_eq(&w.driver, &driver)) else { continue };
        if wants_write != watch.writable {
            watch.writable = wants_write;
            let events = if wants_write { UV_READABLE | UV_WRITABLE } else { UV_READABLE };
            unsafe { uv_poll_start(watch.poll, events, on_poll) };
        }
    }
}

/// Lets go of the sessions whose connections ended: closes each one's handle, then its socket
/// (kept open until then, see `driver::watch_fd`).
fn reap(state: &LoopState) {
    if !state.wakeup.reap.swap(false, Ordering::AcqRel) {
        return;
    }
    let ended: Vec<Watch> = {
        let mut watched = state.watched.borrow_mut();
        let (ended, live) = std::mem::take(&mut *watched).into_iter().partition(|w| w.driver.ended());
        *watched = live;
        ended
    };
    for watch in ended {
        close(watch, false);
    }
}

/// Closes a watch's handle and then lets its driver go (giving the session back if this loop
/// has it; with `wake`, the worker task is woken to poll it itself).
fn close(watch: Watch, wake: bool) {
    unsafe { uv_close(watch.poll, free_handle) };
    if watch.taken {
        watch.driver.give_back(wake);
    } else if wake {
        // Nobody else watches its socket now: the worker task polls it (and hands it to tokio).
        watch.driver.wake_worker();
    }
    watch.driver.unwatch();
}

/// A session taken over for one statement polled on this thread's loop; dropping it gives the
/// session back. Holds nothing of the loop, so that the statement's future stays `Send`.
#[derive(Debug)]
pub(crate) struct Borrowed(Option<Arc<Driver>>);

/// Takes `driver`'s session over for the statement being polled, if this thread is polling its
/// loop and the session is not taken already (nor watched by another thread's loop).
pub(crate) fn borrow(driver: &Arc<Driver>) -> Borrowed {
    if !driving() {
        return Borrowed(None);
    }
    let Some(state) = current() else { return Borrowed(None) };
    let Some(newly) = driver.take(&state.wakeup) else { return Borrowed(None) };
    if newly {
        let poll = new_handle();
        if unsafe { uv_poll_init(state.uv_loop, poll, driver.fd) } != 0 {
            drop(unsafe { Box::from_raw(poll.cast::<[u64; HANDLE_WORDS]>()) });
            driver.give_back(false);
            driver.unwatch();
            return Borrowed(None);
        }
        OPEN_HANDLES.with(|c| c.set(c.get() + 1));
        unsafe { uv_unref(poll) };
        crate::driver::watch_fd(driver.fd, &state.wakeup);
        state.watched.borrow_mut().push(Watch { driver: driver.clone(), poll, started: false, writable: false, taken: false });
    }
    {
        let mut watched = state.watched.borrow_mut();
        let Some(watch) = watched.iter_mut().find(|w| Arc::ptr_eq(&w.driver, driver)) else {
            drop(watched);
            driver.give_back(false);
            return Borrowed(None);
        };
        watch.taken = true;
        if !watch.started || watch.writable {
            unsafe { uv_poll_start(watch.poll, UV_READABLE, on_poll) };
            watch.started = true;
            watch.writable = false;
        }
    }
    DRIVEN.fetch_add(1, Ordering::Relaxed);
    // Polled once now, so that the statement's request wakes this loop, not the worker.
    let _ = driver.poll_taken(&mut Context::from_waker(&state.connection_waker));
    Borrowed(Some(driver.clone()))
}

impl Drop for Borrowed {
    fn drop(&mut self) {
        if let Some(driver) = self.0.take() {
            give_back(&driver);
        }
    }
}

fn give_back(driver: &Arc<Driver>) {
    // During the thread's teardown the loop is gone: the session goes back with a wake-up.
    let Some(state) = current() else {
        driver.give_back(true);
        return;
    };
    let mut watched = state.watched.borrow_mut();
    match watched.iter_mut().find(|w| Arc::ptr_eq(&w.driver, driver)) {
        Some(watch) if watch.taken => {
            watch.taken = false;
            drop(watched);
            driver.give_back(false);
        }
        _ => {}
    }
}

/// The environment's async cleanup hook: gives every taken session back, drops the tasks still
/// here (their guards answer them), and closes the loop's handles; Node waits for the hook to
/// be removed, which the last close callback does.
unsafe extern "C" fn cleanup(hook: sys::napi_async_cleanup_hook_handle, _data: *mut c_void) {
    CLEANUP.with(|c| c.set(hook));
    let state = LOOP.with(|l| l.borrow_mut().take());
    if let Some(state) = state {
        let tasks = std::mem::take(&mut *state.tasks.borrow_mut());
        drop(tasks);
        let watched = std::mem::take(&mut *state.watched.borrow_mut());
        for watch in watched {
            close(watch, true);
        }
        let handle = std::mem::replace(&mut state.wakeup.handle.lock().0, std::ptr::null_mut());
        if !handle.is_null() {
            unsafe { uv_close(handle, free_handle) };
        }
    }
    finish_cleanup_if_done();
}

fn finish_cleanup_if_done() {
    if OPEN_HANDLES.try_with(Cell::get).map_or(true, |open| open > 0) {
        return;
    }
    let hook = CLEANUP.try_with(|c| c.replace(std::ptr::null_mut())).unwrap_or(std::ptr::null_mut());
    if !hook.is_null() {
        unsafe { sys::napi_remove_async_cleanup_hook(hook) };
    }
}
