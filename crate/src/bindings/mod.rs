//! The napi surface. Private: `index.ts` and `lib/` wrap it in the public API.
//!
//! Both directions are batched (SPEC §7.1). JS queues the operations of one tick and hands them
//! over as one Buffer (`submit`), which wakes the runtime once; results are queued here and the
//! first completion of a batch wakes the JS thread through one long-lived threadsafe function,
//! after which JS takes every queued result as one Buffer. napi-rs's own promise bridge would
//! create a threadsafe function, a uv handle and a cleanup hook per call.
//!
//! Handlers are plain integers chosen by JS, so a checkout allocates no JS or napi object. A
//! handler's operations run strictly in submission order on one task at a time, and the
//! synchronous calls (`try_acquire`, `release`, `in_transaction`) see every operation submitted
//! before them: JS flushes its queue first.
//!
//! No panic crosses N-API (README "No crash path"): every entry point runs under
//! `catch_unwind` and turns a panic into an `INTERNAL` error; a panic inside an operation's task
//! settles that operation with the error; the finalizer and the environment cleanup hook catch
//! theirs. When the JS environment goes away (the end of the script, `worker.terminate()`, an
//! Electron renderer reload), its cleanup hook lets go of every handler of that environment —
//! an idle one is rolled back and returned, a running statement is cancelled and its session
//! closed — before napi-rs shuts the runtime down.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use napi::bindgen_prelude::{Buffer, BufferSlice, Function, PromiseRaw};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Result, Status};
use napi_derive::napi;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use crate::config::PoolConfig;
use crate::error::PoolError;
use crate::oneshot::{AbortCell, OneShot, LARGE_RESULT};
use crate::pgcompat::{self, PgMode, PG_MODE};
use crate::pool::{Canceller, Group, Lease, Pool};
use crate::protocol;

/// Runs a synchronous entry point; a panic becomes an `INTERNAL` error instead of crossing N-API.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(PoolError::from_panic(what, &*payload).into()),
    }
}

/// Runs `f`, which must not fail; a panic is swallowed (for calls whose caller cannot act on an
/// error: finalizers, cleanup hooks, best-effort requests).
fn quietly(f: impl FnOnce()) {
    let _ = std::panic::catch_unwind(AssertUnwindSafe(f));
}

/// Set (`PGDBPOOL_TEST_HOOKS=1` in the environment at load) to let the tests provoke panics.
static TEST_HOOKS: LazyLock<bool> = LazyLock::new(|| std::env::var_os("PGDBPOOL_TEST_HOOKS").is_some_and(|v| v == "1"));

/// Test hook: panics where a statement's text asks for it — `pgdbpool:panic-sync` while the
/// submission is read (`sync`), `pgdbpool:panic` inside the operation's task — so that
/// `__test__/panic.test.js` can check that no panic crosses N-API. Off unless
/// `PGDBPOOL_TEST_HOOKS=1` was set when the addon was loaded.
fn test_panic(sql: &[u8], sync: bool) {
    if !*TEST_HOOKS {
        return;
    }
    let has = |marker: &[u8]| sql.windows(marker.len()).any(|w| w == marker);
    let sync_marker = has(b"pgdbpool:panic-sync");
    if sync_marker == sync && (sync || has(b"pgdbpool:panic")) {
        panic!("test hook: a panic on purpose");
    }
}

/// The JS pool objects of each native pool (by address), which all hear its lifecycle events.
static LISTENERS: LazyLock<Mutex<HashMap<usize, Vec<Weak<Completions>>>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Delivers `pool`'s lifecycle events to `completions` (and to every other JS pool object of
/// it: with `threaded`, each worker thread hears every event).
fn listen(pool: &Arc<Pool>, completions: &Arc<Completions>) {
    let key = Arc::as_ptr(pool) as usize;
    let mut listeners = LISTENERS.lock();
    listeners.retain(|_, list| {
        list.retain(|c| c.strong_count() > 0);
        !list.is_empty()
    });
    let list = listeners.entry(key).or_default();
    list.push(Arc::downgrade(completions));
    if list.len() > 1 {
        return;
    }
    let weak = Arc::downgrade(pool);
    // Runs where the event happened, maybe under the pool's locks: hand the work to a task.
    pool.events().set_waker(Some(Arc::new(move || {
        let weak = weak.clone();
        crate::rt::spawn(async move {
            let Some(pool) = weak.upgrade() else { return };
            let json = pool.events().drain_json();
            let targets: Vec<Arc<Completions>> =
                LISTENERS.lock().get(&key).map(|list| list.iter().filter_map(Weak::upgrade).collect()).unwrap_or_default();
            for completions in targets {
                completions.events(&json);
            }
        });
    })));
}

/// `threaded` pools by normalized config, shared by every worker thread of the process.
static SHARED: LazyLock<Mutex<HashMap<String, Weak<Pool>>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn config_error(message: String) -> napi::Error {
    let json = serde_json::json!({ "code": "CONFIG", "message": message });
    napi::Error::from_reason(json.to_string())
}

fn build_pool(config_json: &str) -> Result<Arc<Pool>> {
    Pool::new(PoolConfig::from_json(config_json).map_err(config_error)?).map_err(config_error)
}

type Wake = ThreadsafeFunction<(), (), (), Status, false, true>;

/// Finished operations waiting for the JS thread, encoded back to back:
/// `u32 id | u8 status (0 ok, 1 error) | u32 len | payload (result Buffer or error JSON)`.
struct Completions {
    queue: Mutex<Vec<u8>>,
    wake: Wake,
    /// Signalled whenever JS takes the queue.
    taken: Notify,
    /// One-shot statements that have an `AbortSignal`, by id, while they run.
    aborts: Mutex<HashMap<u32, Arc<AbortCell>>>,
}

/// Queue capacity kept between batches.
const KEEP_QUEUE: usize = 1 << 20;
/// Completions handed to JS in one Buffer at most (at least one whole record): a backlog of
/// large results must not make one Buffer larger than JS allows.
const TAKE_CHUNK: usize = 64 << 20;
/// How long a large result may wait for a busy JS thread before its connection is freed anyway.
const TAKE_WAIT: Duration = Duration::from_secs(60);

impl Completions {
    /// Completes `id`, then lets go of `hold` (what keeps the caller's connection); for a large
    /// result, waits until JS has taken it, so that the connection is not reused while results
    /// pile up faster than JS decodes them. A small result lets go first: JS must not hear of
    /// it while its connection still counts as in use.
    async fn deliver<T>(&self, id: u32, bytes: Vec<u8>, hold: T) {
        if bytes.len() < LARGE_RESULT {
            drop(hold);
            return self.complete(id, Ok(bytes));
        }
        let taken = self.taken.notified();
        tokio::pin!(taken);
        taken.as_mut().enable();
        self.complete(id, Ok(bytes));
        let _ = tokio::time::timeout(TAKE_WAIT, taken).await;
        drop(hold);
    }

    /// Queues an asynchronous message of a pg client's session as record id 0 with status 3:
    /// `u32 subscription | u8 type | body`.
    fn async_message(&self, subscription: u32, kind: u8, body: &[u8]) {
        let mut payload = Vec::with_capacity(5 + body.len());
        payload.extend_from_slice(&subscription.to_be_bytes());
        payload.push(kind);
        payload.extend_from_slice(body);
        self.push(0, 3, &payload);
    }

    /// Queues lifecycle events (a JSON array) as record id 0 with status 2.
    fn events(&self, json: &str) {
        self.push(0, 2, json.as_bytes());
    }

    fn complete(&self, id: u32, result: std::result::Result<Vec<u8>, PoolError>) {
        match result {
            Ok(bytes) => self.push(id, 0, &bytes),
            Err(err) => self.push(id, 1, err.to_json().as_bytes()),
        }
    }

    fn push(&self, id: u32, status: u8, payload: &[u8]) {
        // The result writer keeps results far below this; a record length must never wrap.
        let Ok(len) = u32::try_from(payload.len()) else {
            let err = PoolError::Query(format!("result too large: {} bytes do not fit one result record", payload.len()));
            return self.push(id, 1, err.to_json().as_bytes());
        };
        let was_empty = {
            let mut queue = self.queue.lock();
            let was_empty = queue.is_empty();
            queue.extend_from_slice(&id.to_be_bytes());
            queue.push(status);
            queue.extend_from_slice(&len.to_be_bytes());
            queue.extend_from_slice(payload);
            was_empty
        };
        if was_empty {
            self.wake();
        }
    }

    fn wake(&self) {
        // Fails only while the JS environment is shutting down; nobody is left to tell.
        let _ = self.wake.call((), ThreadsafeFunctionCallMode::NonBlocking);
    }

    /// Ends a one-shot statement's abortability (before its id is completed: JS may reuse it).
    fn forget_abort(&self, id: u32) {
        self.aborts.lock().remove(&id);
    }
}

/// Completes an operation exactly once: if its task ends without answering (a panic, or the
/// runtime shut down and dropped it), it answers with an `INTERNAL` error, so that no promise
/// is left pending.
struct Settle {
    completions: Arc<Completions>,
    id: u32,
    done: bool,
    /// Registered in `Completions::aborts`, to be forgotten there first.
    abortable: bool,
}

impl Settle {
    fn new(completions: &Arc<Completions>, id: u32, abortable: bool) -> Self {
        Self { completions: completions.clone(), id, done: false, abortable }
    }

    /// Marks the operation answered (by the caller, right after).
    fn disarm(&mut self) {
        self.done = true;
        if self.abortable {
            self.completions.forget_abort(self.id);
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if !self.done {
            if self.abortable {
                self.completions.forget_abort(self.id);
            }
            self.completions
                .complete(self.id, Err(PoolError::Internal("the operation was dropped before it finished (the runtime shut down)".into())));
        }
    }
}

/// Operation codes of the submission format, shared with `lib/native.ts`.
mod op {
    pub const QUERY: u8 = 1;
    pub const HANDLER_QUERY: u8 = 2;
    pub const ACQUIRE: u8 = 3;
    pub const COMMIT: u8 = 4;
    pub const ROLLBACK: u8 = 5;
    /// `pgdbpool/pg`: a one-shot query in pg mode (a third chunk carries its options).
    pub const PG_QUERY: u8 = 6;
    /// `pgdbpool/pg`: a handler query in pg mode.
    pub const PG_HANDLER_QUERY: u8 = 7;
    /// Flag: the operation has an `AbortSignal` (`abort` / `cancel` may name it).
    pub const ABORTABLE: u8 = 0x80;
    /// Flag: aborted before it was handed over; answer it without running it.
    pub const ABORTED: u8 = 0x40;
    pub const CODE: u8 = 0x3f;
}

/// One operation of a handler, run in submission order.
enum HandlerOp {
    Acquire(u32),
    Query(u32, Bytes, Bytes),
    Commit(u32),
    Rollback(u32),
    /// A statement of `pgdbpool/pg` (see `pgcompat`).
    PgQuery(u32, Bytes, Bytes, Arc<PgMode>),
}

impl HandlerOp {
    fn id(&self) -> u32 {
        match self {
            HandlerOp::Acquire(id)
            | HandlerOp::Query(id, ..)
            | HandlerOp::PgQuery(id, ..)
            | HandlerOp::Commit(id)
            | HandlerOp::Rollback(id) => *id,
        }
    }
}

struct HandlerState {
    lease: Option<Lease>,
    /// Kept outside the lease, which its task holds while a statement runs.
    canceller: Option<Canceller>,
    queue: VecDeque<HandlerOp>,
    /// A task is working through `queue` (and holds the lease while a statement runs).
    running: bool,
    /// The id of the operation the task is working on: the only one a cancel request may be
    /// sent for.
    current: Option<u32>,
    /// JS let go of the handler: the task drops the lease when the queue is done.
    released: bool,
    /// Cancel requests (from aborted queries) still on their way to the server: the handler's
    /// next statement waits for them, or a late one would cancel it (see `Endpoint::cancel`).
    cancels: Vec<tokio::task::JoinHandle<()>>,
    /// A cancel request was sent for this session. It never goes back to the pool: nothing
    /// tells when a cancel request has reached the server (a proxy may close the cancel
    /// connection before passing it on), and a late one would cancel another user's statement.
    cancelled: bool,
}

impl HandlerState {
    /// How to cancel on this session, worked out the first time it is needed (most handlers
    /// never cancel, and a cancel token costs an allocation per checkout).
    fn canceller(&mut self) -> Option<Canceller> {
        if self.canceller.is_none() {
            self.canceller = self.lease.as_ref().and_then(Lease::canceller);
        }
        self.canceller.clone()
    }

    /// Sends a cancel request for the statement running now; the session is closed at release.
    fn cancel_running(&mut self) {
        if let Some(canceller) = self.canceller() {
            if let Some(request) = crate::rt::spawn(canceller.cancel()) {
                self.cancels.push(request);
            }
            self.cancelled = true;
        }
    }
}

/// Waits until the server has processed each cancel request (each gives up after 2 s).
async fn cancels_done(cancels: Vec<tokio::task::JoinHandle<()>>) {
    for cancel in cancels {
        let _ = cancel.await;
    }
}

/// The core side of one JS `Handler` while it holds (or is getting) a connection.
struct HandlerSlot {
    group: Arc<Group>,
    state: Mutex<HandlerState>,
}

impl HandlerSlot {
    fn new(group: Arc<Group>, lease: Option<Lease>) -> Arc<Self> {
        Arc::new(Self {
            group,
            state: Mutex::new(HandlerState {
                lease,
                canceller: None,
                queue: VecDeque::new(),
                running: false,
                current: None,
                released: false,
                cancels: Vec::new(),
                cancelled: false,
            }),
        })
    }

    /// Queues `op`; returns true when the caller must start the task that runs the queue.
    fn push(&self, op: HandlerOp) -> bool {
        let mut state = self.state.lock();
        state.queue.push_back(op);
        !std::mem::replace(&mut state.running, true)
    }

    /// The JS environment of this handler is going away: nobody will read its results. What is
    /// queued is dropped (a transaction never commits behind the back of a dead thread), a
    /// running statement is cancelled on the server (its session is closed once it ends), and
    /// an idle connection is returned, rolled back if a transaction is open.
    fn abandon(&self) {
        let mut state = self.state.lock();
        state.released = true;
        state.queue.clear();
        if state.running {
            if state.lease.is_none() && state.current.is_some() {
                // The task holds the lease for a statement running now.
                state.cancel_running();
            }
            return;
        }
        let lease = state.lease.take();
        if state.cancelled {
            lease.iter().for_each(Lease::discard);
        }
        drop(state);
        drop(lease);
    }

    async fn run_queue(self: Arc<Self>, completions: Arc<Completions>) {
        loop {
            let (op, mut lease, cancels) = {
                let mut state = self.state.lock();
                match state.queue.pop_front() {
                    Some(op) => {
                        // Known before the lease leaves the slot, so a cancel while it runs works.
                        state.canceller();
                        state.current = Some(op.id());
                        (op, state.lease.take(), std::mem::take(&mut state.cancels))
                    }
                    None => {
                        state.running = false;
                        state.current = None;
                        let done = if state.released { state.lease.take() } else { None };
                        if state.cancelled {
                            done.iter().for_each(Lease::discard);
                        }
                        drop(state);
                        drop(done);
                        return;
                    }
                }
            };
            let id = op.id();
            let mut settle = Settle::new(&completions, id, false);
            let run = AssertUnwindSafe(async {
                cancels_done(cancels).await;
                match op {
                    HandlerOp::Acquire(_) => match lease {
                        Some(_) => Ok(Vec::new()),
                        None => self.group.acquire().await.map(|l| {
                            lease = Some(l);
                            Vec::new()
                        }),
                    },
                    HandlerOp::Query(_, sql, params) => run_statement(lease.as_mut(), &sql, &params).await,
                    HandlerOp::PgQuery(_, sql, params, mode) => PG_MODE.scope(mode, run_statement(lease.as_mut(), &sql, &params)).await,
                    HandlerOp::Commit(_) => end_transaction(lease.as_mut(), true).await,
                    HandlerOp::Rollback(_) => end_transaction(lease.as_mut(), false).await,
                }
            })
            .catch_unwind()
            .await;
            let result = run.unwrap_or_else(|payload| {
                // The session's state is unknown after a panic: it is closed at release, and
                // the handler's next statements fail (as after a lost connection).
                lease.iter().for_each(Lease::discard);
                Err(PoolError::from_panic("handler operation", &*payload))
            });
            // Put the lease back before JS hears of the result, so that a synchronous call made
            // from the result's continuation sees it. With nothing more queued the task ends
            // here too, for the same reason: a `release()` from that continuation must find the
            // slot idle and check the connection in itself, not leave it to this task a moment
            // later (meanwhile `stats()` said in use and the hand-over to a waiter was missed).
            let finished = {
                let mut state = self.state.lock();
                state.lease = lease;
                state.current = None;
                let finished = state.queue.is_empty() && !state.released;
                if finished {
                    state.running = false;
                }
                finished
            };
            settle.disarm();
            completions.complete(id, result);
            if finished {
                return;
            }
        }
    }
}

fn no_connection() -> PoolError {
    PoolError::Query("this handler holds no connection (its checkout failed or it was released)".into())
}

async fn run_statement(lease: Option<&mut Lease>, sql: &[u8], params: &[u8]) -> std::result::Result<Vec<u8>, PoolError> {
    test_panic(sql, false);
    let sql = std::str::from_utf8(sql).map_err(|_| PoolError::Query("query text is not valid UTF-8".into()))?;
    lease.ok_or_else(no_connection)?.query(sql, params, false).await
}

async fn end_transaction(lease: Option<&mut Lease>, commit: bool) -> std::result::Result<Vec<u8>, PoolError> {
    let Some(lease) = lease else { return Ok(Vec::new()) };
    if commit {
        lease.commit().await?;
    } else {
        lease.rollback().await?;
    }
    Ok(Vec::new())
}

/// Reads the submission format: `u8 op | u32 id | u32 a | u32 b`, and for the two query
/// operations `u32 len | SQL text | u32 len | parameters` after it.
struct Reader {
    batch: Bytes,
    pos: usize,
}

impl Reader {
    fn u8(&mut self) -> Option<u8> {
        let v = *self.batch.get(self.pos)?;
        self.pos += 1;
        Some(v)
    }

    fn u32(&mut self) -> Option<u32> {
        let bytes = self.batch.get(self.pos..self.pos.checked_add(4)?)?;
        self.pos += 4;
        Some(u32::from_be_bytes(bytes.try_into().ok()?))
    }

    fn chunk(&mut self) -> Option<Bytes> {
        let len = self.u32()? as usize;
        let end = self.pos.checked_add(len).filter(|&end| end <= self.batch.len())?;
        let chunk = self.batch.slice(self.pos..end);
        self.pos = end;
        Some(chunk)
    }
}

/// One operation of a submission, read but not started yet.
struct Parsed {
    code: u8,
    flags: u8,
    id: u32,
    a: u32,
    b: u32,
    text: Option<(Bytes, Bytes)>,
    /// The options of a `pgdbpool/pg` statement.
    mode: Option<Arc<PgMode>>,
}

/// Reads a whole submission before anything is started, so that a malformed one (or a panic
/// while reading it) leaves no operation of it half-started: JS then fails them all.
fn parse_batch(batch: Bytes) -> std::result::Result<Vec<Parsed>, ()> {
    let mut reader = Reader { batch, pos: 0 };
    let mut ops = Vec::new();
    while reader.pos < reader.batch.len() {
        let (raw, id, a, b) = (reader.u8(), reader.u32(), reader.u32(), reader.u32());
        let (Some(raw), Some(id), Some(a), Some(b)) = (raw, id, a, b) else { return Err(()) };
        let code = raw & op::CODE;
        let (text, mode) = match code {
            op::QUERY | op::HANDLER_QUERY => {
                let (Some(sql), Some(params)) = (reader.chunk(), reader.chunk()) else { return Err(()) };
                test_panic(&sql, true);
                (Some((sql, params)), None)
            }
            op::PG_QUERY | op::PG_HANDLER_QUERY => {
                let (Some(sql), Some(params), Some(options)) = (reader.chunk(), reader.chunk(), reader.chunk()) else { return Err(()) };
                let mode = PgMode::parse(&options).map_err(|_| ())?;
                (Some((sql, params)), Some(Arc::new(mode)))
            }
            op::ACQUIRE | op::COMMIT | op::ROLLBACK => (None, None),
            _ => return Err(()),
        };
        ops.push(Parsed { code, flags: raw & !op::CODE, id, a, b, text, mode });
    }
    Ok(ops)
}

/// Work found in one submission, started together on the runtime.
enum Job {
    Query {
        id: u32,
        shot: Arc<OneShot>,
        sql: Bytes,
        params: Bytes,
        abort: Option<Arc<AbortCell>>,
    },
    RunHandler(Arc<HandlerSlot>),
    /// A one-shot statement of `pgdbpool/pg`.
    PgQuery {
        id: u32,
        shot: Arc<OneShot>,
        sql: Bytes,
        params: Bytes,
        mode: Arc<PgMode>,
    },
}

impl Job {
    fn run(self, completions: Arc<Completions>) -> BoxFuture<'static, ()> {
        match self {
            Job::Query { id, shot, sql, params, abort } => Box::pin(async move {
                let mut settle = Settle::new(&completions, id, abort.is_some());
                let run = AssertUnwindSafe(async {
                    test_panic(&sql, false);
                    let text = std::str::from_utf8(&sql).map_err(|_| PoolError::Query("query text is not valid UTF-8".into()))?;
                    shot.run(text, &params, abort.as_deref()).await
                })
                .catch_unwind()
                .await;
                settle.disarm();
                match run {
                    Ok(Ok((bytes, ticket))) => completions.deliver(id, bytes, ticket).await,
                    Ok(Err(err)) => completions.complete(id, Err(err)),
                    Err(payload) => completions.complete(id, Err(PoolError::from_panic("one-shot query", &*payload))),
                }
            }),
            Job::RunHandler(slot) => Box::pin(slot.run_queue(completions)),
            Job::PgQuery { id, shot, sql, params, mode } => {
                Box::pin(PG_MODE.scope(mode, Job::Query { id, shot, sql, params, abort: None }.run(completions)))
            }
        }
    }
}

/// A pool as seen from one JS thread.
#[napi]
pub struct NativePool {
    core: Arc<Core>,
    id: u32,
}

/// What a [`NativePool`] holds; also reachable by number through [`CORES`].
pub struct Core {
    pool: Arc<Pool>,
    completions: Arc<Completions>,
    /// This object no longer counts as a user of the pool (closed, or its environment is gone).
    detached: AtomicBool,
    /// Its JS environment is gone.
    abandoned: AtomicBool,
    oneshots: Vec<Arc<OneShot>>,
    handlers: Mutex<HandlerTable>,
}

/// Handler slots by the JS handler number. JS hands out small numbers and reuses freed ones,
/// so a vector indexed by number does what a hash map did, without hashing on every checkout.
#[derive(Default)]
struct HandlerTable(Vec<Option<Arc<HandlerSlot>>>);

impl HandlerTable {
    fn get(&self, handler: u32) -> Option<&Arc<HandlerSlot>> {
        self.0.get(handler as usize).and_then(Option::as_ref)
    }

    fn insert(&mut self, handler: u32, slot: Arc<HandlerSlot>) {
        let i = handler as usize;
        if i >= self.0.len() {
            self.0.resize_with(i + 1, || None);
        }
        self.0[i] = Some(slot);
    }

    fn remove(&mut self, handler: u32) -> Option<Arc<HandlerSlot>> {
        self.0.get_mut(handler as usize).and_then(Option::take)
    }
}

impl std::ops::Deref for NativePool {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

/// The cores of live JS pool objects, by number. `try_acquire_handler` and `release_handler`
/// run on every checkout, and napi-rs registers a borrow of the class instance on every method
/// call, a sixth of a whole checkout/release cycle; a number costs a read lock.
static CORES: LazyLock<RwLock<Vec<Option<Arc<Core>>>>> = LazyLock::new(|| RwLock::new(Vec::new()));

fn register(core: Arc<Core>) -> u32 {
    let mut cores = CORES.write();
    let id = cores.iter().position(Option::is_none).unwrap_or_else(|| {
        cores.push(None);
        cores.len() - 1
    });
    cores[id] = Some(core);
    id as u32
}

thread_local! {
    /// The cores created in this thread's JS environment (one environment per JS thread at a
    /// time), and whether its cleanup hook is installed.
    static ENV_CORES: RefCell<Option<Vec<Weak<Core>>>> = const { RefCell::new(None) };
}

/// Makes sure `core` lets go of its handlers when its JS environment is torn down.
fn watch_environment(env: &Env, core: &Arc<Core>) -> Result<()> {
    ENV_CORES.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            // Added after napi-rs's own hook, so it runs before that one shuts the runtime down.
            env.add_env_cleanup_hook((), |()| quietly(environment_gone))?;
            *cell = Some(Vec::new());
        }
        if let Some(list) = cell.as_mut() {
            list.retain(|core| core.strong_count() > 0);
            list.push(Arc::downgrade(core));
        }
        Ok(())
    })
}

/// The cleanup hook of a JS environment: every pool object of it lets go of its handlers.
fn environment_gone() {
    let cores = ENV_CORES.try_with(|cell| cell.borrow_mut().take()).ok().flatten().unwrap_or_default();
    for core in cores.iter().filter_map(Weak::upgrade) {
        core.abandon();
    }
}

/// Gives handler `handler` of pool object `core` an idle connection of group `group` if one is
/// at hand right now. `false` means submit an acquire instead.
#[napi(catch_unwind)]
pub fn try_acquire_handler(core: u32, group: u32, handler: u32) -> Result<bool> {
    guarded("tryAcquireHandler", || {
        let cores = CORES.read();
        let core = cores.get(core as usize).and_then(Option::as_ref).ok_or(PoolError::Closed)?;
        Ok(core.try_acquire(group, handler)?)
    })
}

/// Lets go of `handler` of pool object `core`. Synchronous: an open transaction is rolled back
/// in the background, and the connection is not handed to anyone before that is done. With
/// `hand_over`, a clean connection stays under the same handler number for the caller's next
/// waiting checkout (returns true), provided no checkout other than the caller's `own_waiting`
/// ones is queued in the core.
#[napi(catch_unwind)]
pub fn release_handler(core: u32, handler: u32, hand_over: bool, own_waiting: u32) -> bool {
    guarded("releaseHandler", || {
        let cores = CORES.read();
        Ok(cores.get(core as usize).and_then(Option::as_ref).is_some_and(|core| core.release(handler, hand_over, own_waiting)))
    })
    .unwrap_or(false)
}

/// Sets the largest result the core builds (bytes; JS passes what its Buffers can hold).
#[napi(catch_unwind)]
pub fn set_max_result_bytes(bytes: f64) {
    if bytes.is_finite() && bytes >= 1.0 {
        protocol::set_max_result_bytes(bytes as u64);
    }
}

#[napi]
impl NativePool {
    /// Creates (or, with `shared`, joins) a pool. No I/O happens here. `on_complete` is called
    /// (with no arguments) when results are ready for `take_completions`.
    #[napi(factory, catch_unwind)]
    pub fn open(env: Env, config_json: String, shared: bool, on_complete: Function<(), ()>) -> Result<Self> {
        guarded("NativePool.open", || {
            crate::rt::adopt_napi_runtime();
            let wake: Wake = on_complete.build_threadsafe_function::<()>().callee_handled::<false>().weak::<true>().build()?;
            let pool = if shared {
                let mut registry = SHARED.lock();
                registry.retain(|_, weak| weak.strong_count() > 0);
                match registry.get(&config_json).and_then(Weak::upgrade).filter(|p| !p.is_closed()) {
                    Some(pool) => pool,
                    None => {
                        let pool = build_pool(&config_json)?;
                        registry.insert(config_json, Arc::downgrade(&pool));
                        pool
                    }
                }
            } else {
                build_pool(&config_json)?
            };
            pool.users.fetch_add(1, Ordering::SeqCst);
            let completions =
                Arc::new(Completions { queue: Mutex::new(Vec::new()), wake, taken: Notify::new(), aborts: Mutex::new(HashMap::new()) });
            listen(&pool, &completions);
            let oneshots = pool.groups.iter().map(|g| OneShot::new(g.clone(), g.config.pipeline)).collect();
            let core = Arc::new(Core {
                pool,
                completions,
                detached: AtomicBool::new(false),
                abandoned: AtomicBool::new(false),
                oneshots,
                handlers: Mutex::new(HandlerTable::default()),
            });
            watch_environment(&env, &core)?;
            let id = register(core.clone());
            Ok(Self { core, id })
        })
    }

    /// This object's number for `tryAcquireHandler` and `releaseHandler`.
    #[napi(getter, catch_unwind)]
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Completions queued since the last call, as one Buffer (see [`Completions`]): whole
    /// records up to [`TAKE_CHUNK`] bytes (at least one); for the rest, JS is woken again.
    /// Copied into memory the JS engine owns: a Buffer over Rust memory is freed only by a
    /// finalizer the engine runs when it sees fit, and RSS grew by gigabytes under a stream of
    /// large results. A copy that fails leaves the queue as it was.
    #[napi(catch_unwind)]
    pub fn take_completions<'env>(&self, env: &'env Env) -> Result<BufferSlice<'env>> {
        let (copy, more) = guarded("takeCompletions", || {
            let mut queue = self.completions.queue.lock();
            let end = chunk_end(&queue, TAKE_CHUNK);
            let copy = BufferSlice::copy_from(env, &queue[..end])?;
            if end == queue.len() {
                queue.clear();
                if queue.capacity() > KEEP_QUEUE {
                    queue.shrink_to(KEEP_QUEUE);
                }
            } else {
                queue.drain(..end);
            }
            Ok((copy, !queue.is_empty()))
        })?;
        self.completions.taken.notify_waiters();
        if more {
            self.completions.wake();
        }
        Ok(copy)
    }

    /// How many JS pool objects (across threads) use this pool.
    #[napi(getter, catch_unwind)]
    pub fn users(&self) -> u32 {
        self.pool.users.load(Ordering::SeqCst) as u32
    }

    /// Opens the first connections; rejects with DB_OFFLINE when a group reaches no endpoint.
    #[napi(ts_return_type = "Promise<void>", catch_unwind)]
    pub fn warm_up<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, ()>> {
        let pool = self.pool.clone();
        env.spawn_future(async move { pool.warm_up().await.map_err(Into::into) })
    }

    /// Starts every operation in `batch` (see [`Reader`]); each completes its id. A malformed
    /// batch is a bug in `lib/native.ts` and throws, having started none of its operations.
    #[napi(catch_unwind)]
    pub fn submit(&self, batch: Buffer) -> Result<()> {
        let parsed = guarded("submit", || {
            parse_batch(Bytes::from(batch.to_vec()))
                .map_err(|()| napi::Error::from_reason("{\"code\":\"INTERNAL\",\"message\":\"malformed submission\"}"))
        })?;
        guarded("submit", || {
            self.start(parsed);
            Ok(())
        })
    }

    /// An aborted operation: a handler statement still queued is dropped unrun; the one running
    /// is cancelled on the server (it then fails with SQLSTATE 57014, and the session is closed
    /// at release); one that already ended, or an id this handler does not have, is left alone.
    #[napi(catch_unwind)]
    pub fn cancel(&self, handler: u32, id: u32) {
        quietly(|| {
            let Some(slot) = self.handlers.lock().get(handler).cloned() else { return };
            let mut state = slot.state.lock();
            if let Some(pos) = state.queue.iter().position(|op| op.id() == id) {
                state.queue.remove(pos);
                drop(state);
                self.completions.complete(id, Err(PoolError::Aborted));
            } else if state.current == Some(id) {
                state.cancel_running();
            }
        });
    }

    /// An aborted one-shot statement: while it still waits for a connection or a pipeline
    /// slot it gives up and never reaches the server; once sent it runs on, and its result is
    /// dropped (its connection may be shared, so it is not cancelled).
    #[napi(catch_unwind)]
    pub fn abort(&self, id: u32) {
        quietly(|| {
            let cell = self.completions.aborts.lock().get(&id).cloned();
            if let Some(cell) = cell {
                cell.fire();
            }
        });
    }

    /// Whether a transaction is open on `handler` (true while a statement is running on it).
    #[napi(catch_unwind)]
    pub fn in_transaction(&self, handler: u32) -> bool {
        guarded("inTransaction", || {
            let Some(slot) = self.handlers.lock().get(handler).cloned() else { return Ok(false) };
            let state = slot.state.lock();
            Ok(match &state.lease {
                Some(lease) => lease.in_transaction(),
                None => state.running,
            })
        })
        .unwrap_or(false)
    }

    /// `pgdbpool/pg`: remembers the session `handler` holds (call right after its checkout, while
    /// no statement runs on it) and returns the backend's process id (0 if unknown).
    #[napi(catch_unwind)]
    pub fn pg_attach(&self, handler: u32) -> u32 {
        guarded("pgAttach", || {
            let Some(slot) = self.handlers.lock().get(handler).cloned() else { return Ok(0) };
            let status = slot.state.lock().lease.as_ref().and_then(Lease::session_status);
            Ok(status.map_or(0, |status| pgcompat::attach(self.id, handler, status)))
        })
        .unwrap_or(0)
    }

    /// `pgdbpool/pg`: delivers the asynchronous messages (notifications, notices, the end of the
    /// connection) of `handler`'s session as completions of id 0, status 3, tagged `subscription`
    /// (see `lib/native.ts`); with `on` false, stops. False if the session is not attached.
    #[napi(catch_unwind)]
    pub fn pg_subscribe(&self, handler: u32, subscription: u32, on: bool) -> bool {
        guarded("pgSubscribe", || {
            let subscriber: Option<pgcompat::Subscriber> = on.then(|| {
                let completions = Arc::downgrade(&self.completions);
                Arc::new(move |kind: u8, body: &[u8]| {
                    if let Some(completions) = completions.upgrade() {
                        completions.async_message(subscription, kind, body);
                    }
                }) as pgcompat::Subscriber
            });
            Ok(pgcompat::subscribe(self.id, handler, subscriber))
        })
        .unwrap_or(false)
    }

    /// `pgdbpool/pg`: forgets `handler`'s session (at release) and ends its subscription.
    #[napi(catch_unwind)]
    pub fn pg_detach(&self, handler: u32) {
        quietly(|| pgcompat::detach(self.id, handler));
    }

    /// Closes `handler`'s connection at release instead of pooling it (pg's `release(err)`).
    #[napi(catch_unwind)]
    pub fn discard(&self, handler: u32) {
        quietly(|| {
            let Some(slot) = self.handlers.lock().get(handler).cloned() else { return };
            let mut state = slot.state.lock();
            if let Some(lease) = &state.lease {
                lease.discard();
            }
            // Never handed over or pooled: release and the handler's task discard a cancelled session.
            state.cancelled = true;
        });
    }

    /// JSON snapshot of gauges and counters.
    #[napi(catch_unwind)]
    pub fn stats(&self) -> Result<String> {
        guarded("stats", || Ok(self.pool.stats_json()))
    }

    /// Detaches this JS object; the last one to detach closes the pool.
    #[napi(ts_return_type = "Promise<void>", catch_unwind)]
    pub fn close<'env>(&self, env: &'env Env, timeout_ms: u32) -> Result<PromiseRaw<'env, ()>> {
        let pool = self.pool.clone();
        let last = !self.detached.swap(true, Ordering::SeqCst) && pool.users.fetch_sub(1, Ordering::SeqCst) == 1;
        env.spawn_future(async move {
            if last {
                pool.close(Duration::from_millis(u64::from(timeout_ms))).await;
            }
            Ok(())
        })
    }
}

/// Where the first [`TAKE_CHUNK`] bytes' worth of whole records end in `queue` (at least one
/// record; the whole queue if it is malformed, which it never is).
fn chunk_end(queue: &[u8], max: usize) -> usize {
    if queue.len() <= max {
        return queue.len();
    }
    let mut end = 0;
    while end < queue.len() {
        let Some(len) = queue.get(end + 5..end + 9).and_then(|b| <[u8; 4]>::try_from(b).ok()) else { return queue.len() };
        let next = end + 9 + u32::from_be_bytes(len) as usize;
        if next > queue.len() {
            return queue.len();
        }
        if end > 0 && next > max {
            break;
        }
        end = next;
    }
    end
}

impl Core {
    /// Starts the operations of a submission.
    fn start(&self, parsed: Vec<Parsed>) {
        let mut jobs = Vec::new();
        for Parsed { code, flags, id, a, b, text, mode } in parsed {
            if flags & op::ABORTED != 0 {
                // Aborted in JS before it was handed over: it never runs.
                self.completions.complete(id, Err(PoolError::Aborted));
                continue;
            }
            match (code, text) {
                (op::QUERY, Some((sql, params))) => match self.oneshots.get(a as usize) {
                    Some(shot) if !self.pool.is_closed() => {
                        let abort = (flags & op::ABORTABLE != 0).then(|| {
                            let cell = Arc::new(AbortCell::default());
                            self.completions.aborts.lock().insert(id, cell.clone());
                            cell
                        });
                        jobs.push(Job::Query { id, shot: shot.clone(), sql, params, abort });
                    }
                    _ => self.completions.complete(id, Err(PoolError::Closed)),
                },
                (op::PG_QUERY, Some((sql, params))) => match (self.oneshots.get(a as usize), mode) {
                    (Some(shot), Some(mode)) if !self.pool.is_closed() => {
                        jobs.push(Job::PgQuery { id, shot: shot.clone(), sql, params, mode })
                    }
                    _ => self.completions.complete(id, Err(PoolError::Closed)),
                },
                (op::ACQUIRE, _) => match self.group(b) {
                    Ok(group) => {
                        let slot = HandlerSlot::new(group, None);
                        self.handlers.lock().insert(a, slot.clone());
                        slot.push(HandlerOp::Acquire(id));
                        jobs.push(Job::RunHandler(slot));
                    }
                    Err(e) => self.completions.complete(id, Err(e)),
                },
                (code, text) => {
                    let handler_op = match (code, text, mode) {
                        (op::HANDLER_QUERY, Some((sql, params)), _) => HandlerOp::Query(id, sql, params),
                        (op::PG_HANDLER_QUERY, Some((sql, params)), Some(mode)) => HandlerOp::PgQuery(id, sql, params, mode),
                        (op::COMMIT, ..) => HandlerOp::Commit(id),
                        _ => HandlerOp::Rollback(id),
                    };
                    let slot = self.handlers.lock().get(a).cloned();
                    match slot {
                        Some(slot) => {
                            if slot.push(handler_op) {
                                jobs.push(Job::RunHandler(slot));
                            }
                        }
                        None if code == op::HANDLER_QUERY || code == op::PG_HANDLER_QUERY => {
                            self.completions.complete(id, Err(no_connection()))
                        }
                        // Nothing to end on a handler that never took a connection.
                        None => self.completions.complete(id, Ok(Vec::new())),
                    }
                }
            }
        }
        if jobs.is_empty() {
            return;
        }
        let completions = self.completions.clone();
        // One wake-up of the runtime for the whole batch, and one task that drives every job of
        // it. All jobs get their first poll before the task yields, so each statement is already
        // queued on its connection when that connection's task runs: the statements of one
        // batch that share a connection go out in one write, not one write each. Should the
        // runtime be gone, the jobs are dropped and each one's `Settle` answers it.
        crate::rt::spawn(async move {
            let mut running: FuturesUnordered<BoxFuture<'static, ()>> = jobs.into_iter().map(|job| job.run(completions.clone())).collect();
            while running.next().await.is_some() {}
        });
    }

    /// See [`try_acquire_handler`].
    fn try_acquire(&self, group: u32, handler: u32) -> std::result::Result<bool, PoolError> {
        let group = self.group(group)?;
        Ok(match group.try_acquire_now() {
            Some(lease) => {
                self.handlers.lock().insert(handler, HandlerSlot::new(group, Some(lease)));
                true
            }
            None => false,
        })
    }

    /// See [`release_handler`].
    fn release(&self, handler: u32, hand_over: bool, own_waiting: u32) -> bool {
        let mut handlers = self.handlers.lock();
        let Some(slot) = handlers.get(handler).cloned() else { return false };
        let mut state = slot.state.lock();
        if !state.running
            && hand_over
            && !state.cancelled
            && state.lease.as_mut().is_some_and(|lease| lease.hand_over(own_waiting as usize))
        {
            // Same slot, same number: the next checkout takes it as it is.
            return true;
        }
        handlers.remove(handler);
        drop(handlers);
        state.released = true;
        if state.running {
            // Its task lets go of the connection once the queued statements are done.
            return false;
        }
        let lease = state.lease.take();
        if state.cancelled {
            lease.iter().for_each(Lease::discard);
        }
        drop(state);
        drop(lease);
        false
    }

    fn group(&self, index: u32) -> std::result::Result<Arc<Group>, PoolError> {
        if self.pool.is_closed() {
            return Err(PoolError::Closed);
        }
        self.pool.groups.get(index as usize).cloned().ok_or_else(|| PoolError::Query(format!("no group #{index}")))
    }

    /// Its JS environment is gone (or the JS object was collected): it stops counting as a user
    /// of the pool and lets go of every handler (see [`HandlerSlot::abandon`]). Idempotent.
    fn abandon(&self) {
        if self.abandoned.swap(true, Ordering::SeqCst) {
            return;
        }
        if !self.detached.swap(true, Ordering::SeqCst) {
            self.pool.users.fetch_sub(1, Ordering::SeqCst);
        }
        let slots: Vec<Arc<HandlerSlot>> = self.handlers.lock().0.drain(..).flatten().collect();
        for slot in slots {
            slot.abandon();
        }
    }
}

impl Drop for NativePool {
    fn drop(&mut self) {
        // A finalizer: nothing in it may panic across N-API.
        quietly(|| {
            if let Some(entry) = CORES.write().get_mut(self.id as usize) {
                *entry = None;
            }
            self.core.abandon();
        });
    }
}
