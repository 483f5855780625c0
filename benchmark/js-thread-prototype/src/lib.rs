//! A measurement, not part of the package: one tokio-postgres session whose connection is
//! driven either by a tokio worker (as the pool's sessions are) or by the JS thread's own
//! libuv loop (uv_poll on the socket, reads and writes straight from the JS thread), and
//! handed between the two. `npm run benchmark:floor -- --prototype` compares, at concurrency 1:
//! the session kept on the JS thread, handed over for each statement, left on the worker
//! (answered through napi-rs's hand-off), and alternating. It is the design a JS-thread fast
//! path of the pool would use; what it leaves out: errors beyond a message, statements that
//! block on write, TLS, timers, several sessions or environments, teardown, Windows.

use std::cell::{Cell, RefCell};
use std::ffi::{c_int, c_void};
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use napi::bindgen_prelude::*;
use napi::sys;
use napi_derive::napi;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

extern "C" {
    fn uv_poll_init(lp: *mut c_void, handle: *mut c_void, fd: c_int) -> c_int;
    fn uv_poll_start(handle: *mut c_void, events: c_int, cb: unsafe extern "C" fn(*mut c_void, c_int, c_int)) -> c_int;
    fn uv_unref(handle: *mut c_void);
    fn uv_poll_stop(handle: *mut c_void) -> c_int;
}

const UV_READABLE: c_int = 1;

struct Stream(Arc<tokio::net::TcpStream>);

thread_local! {
    /// Set while the JS thread polls: reads and writes go straight to the socket, and readiness
    /// comes from uv_poll instead of tokio's reactor.
    static ON_JS: Cell<bool> = const { Cell::new(false) };
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let js = ON_JS.with(|j| j.get());
            if !js {
                std::task::ready!(self.0.poll_read_ready(cx))?;
            }
            let dst = buf.initialize_unfilled();
            match self.0.try_read(dst) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if js {
                        return Poll::Pending;
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let js = ON_JS.with(|j| j.get());
            if !js {
                std::task::ready!(self.0.poll_write_ready(cx))?;
            }
            match self.0.try_write(b) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if js {
                        return Poll::Pending;
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The session's connection future, polled by the worker task or by the JS thread, whichever
/// owns it.
struct Driver {
    fut: parking_lot::Mutex<Pin<Box<dyn Future<Output = ()> + Send>>>,
    on_js: std::sync::atomic::AtomicBool,
    worker_waker: parking_lot::Mutex<Option<Waker>>,
}

static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
static DRIVER: std::sync::OnceLock<Arc<Driver>> = std::sync::OnceLock::new();
static UV_HANDLE: std::sync::atomic::AtomicPtr<c_void> = std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

fn rt() -> &'static tokio::runtime::Runtime {
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime"))
}

/// The worker's task: polls the connection while the worker owns it.
async fn worker_drive(driver: Arc<Driver>) {
    std::future::poll_fn(|cx| {
        if driver.on_js.load(std::sync::atomic::Ordering::Acquire) {
            *driver.worker_waker.lock() = Some(cx.waker().clone());
            return Poll::Pending;
        }
        driver.fut.lock().as_mut().poll(cx)
    })
    .await
}

fn take_for_js() {
    let d = DRIVER.get().expect("connected");
    d.on_js.store(true, std::sync::atomic::Ordering::Release);
    unsafe { uv_poll_start(UV_HANDLE.load(std::sync::atomic::Ordering::Relaxed), UV_READABLE, readable) };
}

fn give_back() {
    let d = DRIVER.get().expect("connected");
    unsafe { uv_poll_stop(UV_HANDLE.load(std::sync::atomic::Ordering::Relaxed)) };
    d.on_js.store(false, std::sync::atomic::Ordering::Release);
    if let Some(w) = d.worker_waker.lock().take() {
        w.wake();
    }
}

type Task = Pin<Box<dyn Future<Output = std::result::Result<f64, String>>>>;

thread_local! {
    static TASKS: RefCell<Vec<(Task, sys::napi_deferred)>> = const { RefCell::new(Vec::new()) };
    static NEW: RefCell<Vec<(Task, sys::napi_deferred)>> = const { RefCell::new(Vec::new()) };
    static DRIVING: Cell<bool> = const { Cell::new(false) };
    static WOKEN: Cell<bool> = const { Cell::new(false) };
    static ENV: Cell<sys::napi_env> = const { Cell::new(std::ptr::null_mut()) };
    static ASYNC_CTX: Cell<sys::napi_async_context> = const { Cell::new(std::ptr::null_mut()) };
    static WAKER: Waker = Waker::from(Arc::new(Flag));
}

struct Flag;
impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        WOKEN.with(|w| w.set(true));
    }
}

/// Polls the connection and every task until nothing is woken; returns the finished tasks.
fn poll_all() -> Vec<(std::result::Result<f64, String>, sys::napi_deferred)> {
    let waker = WAKER.with(|w| w.clone());
    let mut cx = Context::from_waker(&waker);
    let mut done = Vec::new();
    loop {
        WOKEN.with(|w| w.set(false));
        let new = NEW.with(|n| std::mem::take(&mut *n.borrow_mut()));
        TASKS.with(|t| t.borrow_mut().extend(new));
        TASKS.with(|t| {
            let mut tasks = t.borrow_mut();
            let mut i = 0;
            while i < tasks.len() {
                if let Poll::Ready(r) = tasks[i].0.as_mut().poll(&mut cx) {
                    let (_, d) = tasks.swap_remove(i);
                    done.push((r, d));
                } else {
                    i += 1;
                }
            }
        });
        if let Some(d) = DRIVER.get() {
            if d.on_js.load(std::sync::atomic::Ordering::Acquire) {
                ON_JS.with(|j| j.set(true));
                let _ = d.fut.lock().as_mut().poll(&mut cx);
                ON_JS.with(|j| j.set(false));
            }
        }
        if !WOKEN.with(|w| w.get()) && NEW.with(|n| n.borrow().is_empty()) {
            return done;
        }
    }
}

/// Drives until quiet, settling finished tasks inside a callback scope (so that their
/// continuations run now); continuations that start new tasks are driven in the same turn.
fn drive() {
    if DRIVING.with(|d| d.replace(true)) {
        return;
    }
    let env = ENV.with(|e| e.get());
    loop {
        let done = poll_all();
        if done.is_empty() {
            break;
        }
        unsafe {
            let mut hs = std::ptr::null_mut();
            sys::napi_open_handle_scope(env, &mut hs);
            let mut resource = std::ptr::null_mut();
            sys::napi_create_object(env, &mut resource);
            let mut scope = std::ptr::null_mut();
            sys::napi_open_callback_scope(env, resource, ASYNC_CTX.with(|a| a.get()), &mut scope);
            for (r, d) in done {
                let mut v = std::ptr::null_mut();
                match r {
                    Ok(x) => {
                        sys::napi_create_double(env, x, &mut v);
                        sys::napi_resolve_deferred(env, d, v);
                    }
                    Err(msg) => {
                        let mut s = std::ptr::null_mut();
                        sys::napi_create_string_utf8(env, msg.as_ptr().cast(), msg.len() as isize, &mut s);
                        sys::napi_create_error(env, std::ptr::null_mut(), s, &mut v);
                        sys::napi_reject_deferred(env, d, v);
                    }
                }
            }
            // Closing the outermost scope runs the microtasks: the callers' next statements.
            sys::napi_close_callback_scope(env, scope);
            sys::napi_close_handle_scope(env, hs);
        }
    }
    DRIVING.with(|d| d.set(false));
}

unsafe extern "C" fn readable(_handle: *mut c_void, _status: c_int, _events: c_int) {
    drive();
}

fn start(env: &Env, task: Task) -> Result<Object<'_>> {
    let mut deferred = std::ptr::null_mut();
    let mut promise = std::ptr::null_mut();
    unsafe { sys::napi_create_promise(env.raw(), &mut deferred, &mut promise) };
    NEW.with(|n| n.borrow_mut().push((task, deferred)));
    drive();
    Ok(Object::from_raw(env.raw(), promise))
}

static CLIENT: std::sync::OnceLock<(Arc<tokio_postgres::Client>, tokio_postgres::Statement)> = std::sync::OnceLock::new();

/// Connects on the worker runtime and prepares `sql`; the worker drives the session until a
/// query takes it over.
#[napi]
pub fn connect(env: &Env, host: String, port: u16, user: String, password: String, db: String, sql: String) -> Result<()> {
    ENV.with(|e| e.set(env.raw()));
    unsafe {
        let mut name = std::ptr::null_mut();
        sys::napi_create_string_utf8(env.raw(), c"proto".as_ptr(), 5, &mut name);
        let mut ctx = std::ptr::null_mut();
        sys::napi_async_init(env.raw(), std::ptr::null_mut(), name, &mut ctx);
        ASYNC_CTX.with(|a| a.set(ctx));
    }
    let (client, statement, driver, fd) = rt()
        .block_on(async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let fd = tcp.as_raw_fd();
            let mut config = tokio_postgres::Config::new();
            config.user(&user).password(&password).dbname(&db);
            let (client, connection) = config.connect_raw(Stream(Arc::new(tcp)), tokio_postgres::NoTls).await.map_err(io::Error::other)?;
            let driver = Arc::new(Driver {
                fut: parking_lot::Mutex::new(Box::pin(async move {
                    let _ = connection.await;
                })),
                on_js: std::sync::atomic::AtomicBool::new(false),
                worker_waker: parking_lot::Mutex::new(None),
            });
            tokio::spawn(worker_drive(driver.clone()));
            let statement = client.prepare(&sql).await.map_err(io::Error::other)?;
            Ok::<_, io::Error>((client, statement, driver, fd))
        })
        .map_err(|e| Error::from_reason(e.to_string()))?;
    let _ = CLIENT.set((Arc::new(client), statement));
    let _ = DRIVER.set(driver);
    unsafe {
        let mut lp = std::ptr::null_mut();
        sys::napi_get_uv_event_loop(env.raw(), &mut lp);
        // Larger than uv_poll_t on every platform libuv supports; leaked (one per process).
        let handle = Box::leak(Box::new([0u64; 64])).as_mut_ptr().cast::<c_void>();
        uv_poll_init(lp.cast(), handle, fd);
        uv_unref(handle);
        UV_HANDLE.store(handle, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

fn run(
    client: Arc<tokio_postgres::Client>,
    statement: tokio_postgres::Statement,
) -> impl Future<Output = std::result::Result<f64, String>> {
    async move {
        let rows = client.query(&statement, &[]).await.map_err(|e| e.to_string())?;
        Ok(rows.first().map_or(-1.0, |r| f64::from(r.get::<_, i32>(0))))
    }
}

/// Takes the session over for one statement on the JS thread, then gives it back to the worker.
#[napi]
pub fn query(env: &Env) -> Result<Object<'_>> {
    let (client, statement) = CLIENT.get().cloned().ok_or_else(|| Error::from_reason("not connected"))?;
    take_for_js();
    start(
        env,
        Box::pin(async move {
            let r = run(client, statement).await;
            give_back();
            r
        }),
    )
}

/// The JS thread keeps the session (`stick(true)`) or gives it back (`stick(false)`).
#[napi]
pub fn stick(on: bool) {
    if on {
        take_for_js();
    } else {
        give_back();
    }
}

/// A statement on the JS thread while it keeps the session (see `stick`).
#[napi]
pub fn query_sticky(env: &Env) -> Result<Object<'_>> {
    let (client, statement) = CLIENT.get().cloned().ok_or_else(|| Error::from_reason("not connected"))?;
    start(env, Box::pin(run(client, statement)))
}

/// A statement the worker runs, answered through napi-rs's own hand-off (as the pool does).
#[napi]
pub fn query_worker(env: &Env) -> Result<PromiseRaw<'_, f64>> {
    let (client, statement) = CLIENT.get().cloned().ok_or_else(|| Error::from_reason("not connected"))?;
    let _guard = rt().enter();
    env.spawn_future(async move { run(client, statement).await.map_err(Error::from_reason) })
}
