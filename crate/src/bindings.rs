//! The napi surface. Private: `index.ts` and `lib/` wrap it in the public API.
//!
//! Operations are submitted with an id and return at once; their results are queued and
//! handed to JavaScript in batches: the first completion of a batch wakes the JS thread through
//! one long-lived threadsafe function, and JS then takes every queued result as one Buffer
//! (SPEC §7.1). napi-rs's own promise bridge would create a threadsafe function, a uv handle
//! and a cleanup hook per call.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use napi::bindgen_prelude::{Buffer, Function, PromiseRaw};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Result, Status};
use napi_derive::napi;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::config::PoolConfig;
use crate::error::PoolError;
use crate::pool::{Group, Lease, Pool};

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
}

/// Results above this size hold their connection until JS has taken them (backpressure).
const LARGE_RESULT: usize = 256 * 1024;
/// How long a large result may wait for a busy JS thread before its connection is freed anyway.
const TAKE_WAIT: Duration = Duration::from_secs(60);

impl Completions {
    /// Completes `id`; for a large result, waits until JS has taken it, so that the caller's
    /// connection is not reused while results pile up faster than JS decodes them.
    async fn deliver(&self, id: u32, bytes: Vec<u8>) {
        if bytes.len() < LARGE_RESULT {
            return self.complete(id, Ok(bytes));
        }
        let taken = self.taken.notified();
        tokio::pin!(taken);
        taken.as_mut().enable();
        self.complete(id, Ok(bytes));
        let _ = tokio::time::timeout(TAKE_WAIT, taken).await;
    }

    fn complete(&self, id: u32, result: std::result::Result<Vec<u8>, PoolError>) {
        let was_empty = {
            let mut queue = self.queue.lock();
            let was_empty = queue.is_empty();
            queue.extend_from_slice(&id.to_be_bytes());
            match result {
                Ok(bytes) => {
                    queue.push(0);
                    queue.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                    queue.extend_from_slice(&bytes);
                }
                Err(err) => {
                    let json = err.to_json();
                    queue.push(1);
                    queue.extend_from_slice(&(json.len() as u32).to_be_bytes());
                    queue.extend_from_slice(json.as_bytes());
                }
            }
            was_empty
        };
        if was_empty {
            // Fails only while the JS environment is shutting down; nobody is left to tell.
            let _ = self.wake.call((), ThreadsafeFunctionCallMode::NonBlocking);
        }
    }

    fn spawn<F>(self: &Arc<Self>, id: u32, work: F)
    where
        F: Future<Output = std::result::Result<Vec<u8>, PoolError>> + Send + 'static,
    {
        let completions = self.clone();
        napi::bindgen_prelude::spawn(async move {
            let result = work.await;
            completions.complete(id, result);
        });
    }
}

/// A pool as seen from one JS thread.
#[napi]
pub struct NativePool {
    pool: Arc<Pool>,
    completions: Arc<Completions>,
    detached: Arc<AtomicBool>,
}

#[napi]
impl NativePool {
    /// Creates (or, with `shared`, joins) a pool. No I/O happens here. `on_complete` is called
    /// (with no arguments) when results are ready for `take_completions`.
    #[napi(factory)]
    pub fn open(config_json: String, shared: bool, on_complete: Function<(), ()>) -> Result<Self> {
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
        let completions = Arc::new(Completions { queue: Mutex::new(Vec::new()), wake, taken: Notify::new() });
        Ok(Self { pool, completions, detached: Arc::new(AtomicBool::new(false)) })
    }

    /// Every result queued since the last call, as one Buffer (see [`Completions`]).
    #[napi]
    pub fn take_completions(&self) -> Buffer {
        let batch = std::mem::take(&mut *self.completions.queue.lock());
        self.completions.taken.notify_waiters();
        Buffer::from(batch)
    }

    /// How many JS pool objects (across threads) use this pool.
    #[napi(getter)]
    pub fn users(&self) -> u32 {
        self.pool.users.load(Ordering::SeqCst) as u32
    }

    /// Opens the first connections; rejects with DB_OFFLINE when a group reaches no endpoint.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn warm_up<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, ()>> {
        let pool = self.pool.clone();
        env.spawn_future(async move { pool.warm_up().await.map_err(Into::into) })
    }

    /// A handler on group `group` (index); it takes a connection on first use.
    #[napi]
    pub fn handler(&self, group: u32) -> Result<NativeHandler> {
        let group = self.group(group)?;
        Ok(NativeHandler {
            group,
            completions: self.completions.clone(),
            lease: Arc::new(tokio::sync::Mutex::new(None)),
            released: Arc::new(AtomicBool::new(false)),
        })
    }

    /// One statement on any connection of the group, released right after; completes `id`.
    #[napi]
    pub fn query(&self, id: u32, group: u32, sql: String, params: Buffer) -> Result<()> {
        let group = self.group(group)?;
        let params = params.to_vec();
        let completions = self.completions.clone();
        napi::bindgen_prelude::spawn(async move {
            let run = async {
                let mut lease = match group.try_acquire_now() {
                    Some(lease) => lease,
                    None => group.acquire().await?,
                };
                let bytes = lease.query(&sql, &params, true).await?;
                Ok::<_, PoolError>((bytes, lease))
            };
            match run.await {
                Ok((bytes, lease)) => {
                    completions.deliver(id, bytes).await;
                    drop(lease);
                }
                Err(err) => completions.complete(id, Err(err)),
            }
        });
        Ok(())
    }

    /// JSON snapshot of gauges and counters.
    #[napi]
    pub fn stats(&self) -> String {
        self.pool.stats_json()
    }

    /// Detaches this JS object; the last one to detach closes the pool.
    #[napi(ts_return_type = "Promise<void>")]
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

    fn group(&self, index: u32) -> Result<Arc<Group>> {
        if self.pool.is_closed() {
            return Err(PoolError::Closed.into());
        }
        self.pool
            .groups
            .get(index as usize)
            .cloned()
            .ok_or_else(|| napi::Error::from_reason(format!("{{\"code\":\"UNCONFIGURED_GROUP\",\"message\":\"no group #{index}\"}}")))
    }
}

impl Drop for NativePool {
    fn drop(&mut self) {
        if !self.detached.swap(true, Ordering::SeqCst) {
            self.pool.users.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Lease>>>;

/// A scoped checkout. Statements on it run one after another on one connection.
#[napi]
pub struct NativeHandler {
    group: Arc<Group>,
    completions: Arc<Completions>,
    lease: Slot,
    released: Arc<AtomicBool>,
}

async fn leased(group: &Arc<Group>, slot: &Slot, released: &AtomicBool) -> std::result::Result<tokio::sync::OwnedMutexGuard<Option<Lease>>, PoolError> {
    let mut guard = slot.clone().lock_owned().await;
    if released.load(Ordering::SeqCst) {
        return Err(PoolError::Query("this handler was already released".into()));
    }
    if guard.is_none() {
        *guard = Some(group.acquire().await?);
    }
    Ok(guard)
}

#[napi]
impl NativeHandler {
    /// Takes an idle connection synchronously if one is at hand; `false` means use `acquire`.
    #[napi]
    pub fn try_acquire(&self) -> bool {
        if self.released.load(Ordering::SeqCst) {
            return false;
        }
        let Ok(mut guard) = self.lease.try_lock() else { return false };
        if guard.is_some() {
            return true;
        }
        match self.group.try_acquire_now() {
            Some(lease) => {
                *guard = Some(lease);
                true
            }
            None => false,
        }
    }

    /// Takes the connection now instead of at the first statement; completes `id`.
    #[napi]
    pub fn acquire(&self, id: u32) {
        let (group, slot, released) = (self.group.clone(), self.lease.clone(), self.released.clone());
        self.completions.spawn(id, async move {
            leased(&group, &slot, &released).await?;
            Ok(Vec::new())
        });
    }

    /// Runs one statement; completes `id` with the result.
    #[napi]
    pub fn query(&self, id: u32, sql: String, params: Buffer) {
        let (group, slot, released) = (self.group.clone(), self.lease.clone(), self.released.clone());
        let params = params.to_vec();
        self.completions.spawn(id, async move {
            let mut guard = leased(&group, &slot, &released).await?;
            let lease = guard.as_mut().ok_or(PoolError::Closed)?;
            lease.query(&sql, &params, false).await
        });
    }

    /// Commits the open transaction (a no-op without one); completes `id`.
    #[napi]
    pub fn commit(&self, id: u32) {
        let slot = self.lease.clone();
        self.completions.spawn(id, async move {
            if let Some(lease) = slot.lock().await.as_mut() {
                lease.commit().await?;
            }
            Ok(Vec::new())
        });
    }

    /// Rolls back the open transaction (a no-op without one); completes `id`.
    #[napi]
    pub fn rollback(&self, id: u32) {
        let slot = self.lease.clone();
        self.completions.spawn(id, async move {
            if let Some(lease) = slot.lock().await.as_mut() {
                lease.rollback().await?;
            }
            Ok(Vec::new())
        });
    }

    /// Whether a transaction is open right now.
    #[napi(getter)]
    pub fn in_transaction(&self) -> bool {
        self.lease.try_lock().map(|g| g.as_ref().is_some_and(Lease::in_transaction)).unwrap_or(true)
    }

    /// Gives the connection back. Idempotent and synchronous: an open transaction is rolled
    /// back in the background, and the slot stays taken until that is done.
    #[napi]
    pub fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
        match self.lease.try_lock() {
            Ok(mut guard) => drop(guard.take()),
            Err(_) => {
                // A statement is still running: release when it is done.
                let slot = self.lease.clone();
                napi::bindgen_prelude::spawn(async move {
                    drop(slot.lock().await.take());
                });
            }
        }
    }
}
