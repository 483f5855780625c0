//! The napi surface, private: `index.ts` and `lib/` wrap it in the public API.
//!
//! A statement crosses from JS as one record of a submission batch (`submit`, read and started
//! in [`submission`]); its result is encoded in `crate::codec`, and the result or error is queued
//! as a completion record in [`completions`], which wakes the JS thread once per batch and hands
//! JS every queued record as one Buffer (`takeCompletions`). The byte formats are in [`wire`].
//!
//! Both directions are batched so that one tick of JS costs one wake-up each way; napi-rs's own
//! promise bridge would create a threadsafe function, a uv handle and a cleanup hook per call.
//! Handlers are plain integers chosen by JS, so a checkout allocates no JS or napi object. The
//! synchronous calls (`tryAcquireHandler`, `releaseHandler`, `inTransaction`) see every operation
//! submitted before them: JS flushes its queue first.
//!
//! No panic crosses N-API (README "No crash path"): every entry point runs under
//! `catch_unwind` and turns a panic into an `INTERNAL` error ([`guard`]); a panic inside an
//! operation's task settles that operation with the error; the finalizer and the environment
//! cleanup hook catch theirs. When the JS environment goes away (the end of the script,
//! `worker.terminate()`, an Electron renderer reload), its cleanup hook lets go of every handler
//! of that environment — an idle one is rolled back and returned, a running statement is
//! cancelled and its session closed — before napi-rs shuts the runtime down ([`registry`]).
//!
//! Every error the core reports reaches JS as `PoolError::to_json` (in a completion record, or
//! as a thrown error's reason through `From<PoolError> for napi::Error`); errors of napi-rs's
//! own N-API calls pass through as napi-rs raised them.

mod completions;
mod core;
mod guard;
mod handlers;
mod registry;
mod submission;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use napi::bindgen_prelude::{BufferSlice, Function, PromiseRaw};
use napi::{Env, Result};
use napi_derive::napi;

use self::completions::{Completions, Wake};
use self::core::Core;
use self::guard::{guarded, quietly};
use self::submission::read_batch;
use crate::error::PoolError;
use crate::pgcompat;

/// A pool as seen from one JS thread.
#[napi]
pub struct NativePool {
    core: Arc<Core>,
    id: u32,
}

impl std::fmt::Debug for NativePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativePool").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Gives handler `handler` of pool object `core` an idle connection of group `group` if one is
/// at hand right now. `false` means submit an acquire instead.
#[napi(catch_unwind)]
pub fn try_acquire_handler(core: u32, group: u32, handler: u32) -> Result<bool> {
    guarded("tryAcquireHandler", || {
        Ok(registry::with_core(core, |core| core.try_acquire(group, handler)).unwrap_or(Err(PoolError::Closed))?)
    })
}

/// Lets go of `handler` of pool object `core`. Synchronous: an open transaction is rolled back
/// in the background, and the connection is not handed to anyone before that is done. With
/// `hand_over`, a clean connection stays under the same handler number for the caller's next
/// waiting checkout (returns true), provided no checkout other than the caller's `own_waiting`
/// ones is queued in the core.
#[napi(catch_unwind)]
pub fn release_handler(core: u32, handler: u32, hand_over: bool, own_waiting: u32) -> bool {
    guarded("releaseHandler", || Ok(registry::with_core(core, |core| core.release(handler, hand_over, own_waiting)).unwrap_or(false)))
        .unwrap_or(false)
}

/// How many statements so far ran on a JS thread's own event loop (the fast path of a quiet
/// pool, see `jsloop`); for the tests.
#[napi(catch_unwind)]
pub fn js_thread_statements() -> f64 {
    crate::jsloop::driven() as f64
}

/// Sets the largest result the core builds (bytes; JS passes what its Buffers can hold).
#[napi(catch_unwind)]
pub fn set_max_result_bytes(bytes: f64) {
    if bytes.is_finite() && bytes >= 1.0 {
        crate::codec::set_max_result_bytes(bytes as u64);
    }
}

#[napi]
impl NativePool {
    /// Creates (or, with `shared`, joins) a pool. No I/O happens here. `on_complete` is called
    /// (with no arguments) when results are ready for `take_completions`.
    #[napi(factory, catch_unwind)]
    pub fn open(env: Env, config_json: String, shared: bool, on_complete: Function<'_, (), ()>) -> Result<Self> {
        guarded("NativePool.open", || {
            crate::rt::adopt_napi_runtime();
            let wake: Wake = on_complete.build_threadsafe_function::<()>().callee_handled::<false>().weak::<true>().build()?;
            let direct = (env.raw() as usize, crate::jsloop::function_ref(&env, napi::JsValue::raw(&on_complete)));
            let pool = registry::pool_for(config_json, shared).inspect_err(|_| crate::jsloop::delete_function_ref(direct.0, direct.1))?;
            let completions = Arc::new(Completions::new(wake, direct));
            registry::listen(&pool, &completions);
            let core = Core::new(pool, completions);
            registry::watch_environment(&env, &core)?;
            let id = registry::register(core.clone());
            Ok(Self { core, id })
        })
    }

    /// This object's number for `tryAcquireHandler` and `releaseHandler`.
    #[napi(getter, catch_unwind)]
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Completions queued since the last call, as one Buffer (see `Completions::take`).
    #[napi(catch_unwind)]
    pub fn take_completions<'env>(&self, env: &'env Env) -> Result<BufferSlice<'env>> {
        self.core.completions.take(env)
    }

    /// Completions queued since the last call, copied into `target` (a Buffer JS reuses):
    /// the bytes written, or -1 if they do not fit, leaving them for `takeCompletions`.
    #[napi(catch_unwind)]
    pub fn take_completions_into(&self, mut target: BufferSlice<'_>) -> Result<i64> {
        guarded("takeCompletionsInto", || Ok(self.core.completions.take_into(&mut target).map_or(-1, |len| len as i64)))
    }

    /// How many JS pool objects (across threads) use this pool.
    #[napi(getter, catch_unwind)]
    pub fn users(&self) -> u32 {
        self.core.pool.users.load(std::sync::atomic::Ordering::SeqCst) as u32
    }

    /// Opens the first connections; rejects with DB_OFFLINE when a group reaches no endpoint.
    #[napi(ts_return_type = "Promise<void>", catch_unwind)]
    pub fn warm_up<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, ()>> {
        let pool = self.core.pool.clone();
        env.spawn_future(async move { pool.warm_up().await.map_err(Into::into) })
    }

    /// Starts every operation in the first `len` bytes of `batch` (the submission format, see
    /// `wire`); each completes its id. `quiet`: nothing else of this pool object is in flight
    /// (a lone one-shot statement may then run on the JS thread's own loop, see `jsloop`). A
    /// malformed batch throws, having started none of its operations.
    #[napi(catch_unwind)]
    pub fn submit(&self, env: &Env, batch: BufferSlice<'_>, len: u32, quiet: bool) -> Result<()> {
        let records = guarded("submit", || {
            let bytes = batch
                .get(..len as usize)
                .ok_or_else(|| PoolError::Internal(format!("a submission of {len} bytes in a buffer of {}", batch.len())))?;
            Ok(read_batch(Bytes::copy_from_slice(bytes))?)
        })?;
        guarded("submit", || {
            self.core.submit(env, records, quiet);
            Ok(())
        })
    }

    /// An aborted operation: a handler statement still queued is dropped unrun; the one running
    /// is cancelled on the server (it then fails with SQLSTATE 57014, and the session is closed
    /// at release); one that already ended, or an id this handler does not have, is left alone.
    #[napi(catch_unwind)]
    pub fn cancel(&self, handler: u32, id: u32) {
        quietly(|| {
            if self.core.handler(handler).is_some_and(|slot| slot.cancel(id)) {
                self.core.completions.complete(id, Err(PoolError::Aborted));
            }
        });
    }

    /// An aborted one-shot statement: while it still waits for a connection or a pipeline
    /// slot it gives up and never reaches the server; once sent it runs on, and its result is
    /// dropped (its connection may be shared, so it is not cancelled).
    #[napi(catch_unwind)]
    pub fn abort(&self, id: u32) {
        quietly(|| self.core.completions.abort(id));
    }

    /// Whether a transaction is open on `handler` (true while a statement is running on it).
    #[napi(catch_unwind)]
    pub fn in_transaction(&self, handler: u32) -> bool {
        guarded("inTransaction", || Ok(self.core.handler(handler).is_some_and(|slot| slot.in_transaction()))).unwrap_or(false)
    }

    /// `pgdbpool/pg`: remembers the session `handler` holds (call right after its checkout, while
    /// no statement runs on it) and returns the backend's process id (0 if unknown).
    #[napi(catch_unwind)]
    pub fn pg_attach(&self, handler: u32) -> u32 {
        guarded("pgAttach", || {
            let status = self.core.handler(handler).and_then(|slot| slot.session_status());
            Ok(status.map_or(0, |status| pgcompat::attach(self.id, handler, status)))
        })
        .unwrap_or(0)
    }

    /// `pgdbpool/pg`: delivers the asynchronous messages (notifications, notices, the end of the
    /// connection) of `handler`'s session as completion records of status `ASYNC_MESSAGE`,
    /// tagged `subscription`; with `on` false, stops. False if the session is not attached.
    #[napi(catch_unwind)]
    pub fn pg_subscribe(&self, handler: u32, subscription: u32, on: bool) -> bool {
        guarded("pgSubscribe", || {
            let subscriber: Option<pgcompat::Subscriber> = on.then(|| {
                let completions = Arc::downgrade(&self.core.completions);
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
            if let Some(slot) = self.core.handler(handler) {
                slot.discard();
            }
        });
    }

    /// JSON snapshot of gauges and counters.
    #[napi(catch_unwind)]
    pub fn stats(&self) -> Result<String> {
        guarded("stats", || Ok(self.core.pool.stats_json(Some(self.core.caller()))))
    }

    /// Detaches this JS object; the last one to detach closes the pool.
    #[napi(ts_return_type = "Promise<void>", catch_unwind)]
    pub fn close<'env>(&self, env: &'env Env, timeout_ms: u32) -> Result<PromiseRaw<'env, ()>> {
        let pool = self.core.pool.clone();
        let last = self.core.detach();
        env.spawn_future(async move {
            if last {
                pool.close(Duration::from_millis(u64::from(timeout_ms))).await;
            }
            Ok(())
        })
    }
}

impl Drop for NativePool {
    fn drop(&mut self) {
        // A finalizer: nothing in it may panic across N-API.
        quietly(|| {
            self.core.completions.forget_direct();
            registry::unregister(self.id);
            self.core.abandon();
        });
    }
}
