//! The napi surface. Private: `index.ts` and `lib/` wrap it in the public API.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use napi::bindgen_prelude::{Buffer, PromiseRaw};
use napi::{Env, Result};
use napi_derive::napi;
use parking_lot::Mutex;

use crate::config::PoolConfig;
use crate::error::PoolError;
use crate::pool::{Group, Lease, Pool};

/// `threaded` pools by normalized config, shared by every worker thread of the process.
static SHARED: LazyLock<Mutex<HashMap<String, Weak<Pool>>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn config_error(message: String) -> napi::Error {
    let json = serde_json::json!({ "code": "CONFIG", "message": message });
    napi::Error::from_reason(json.to_string())
}

/// A pool as seen from one JS thread.
#[napi]
pub struct NativePool {
    pool: Arc<Pool>,
    detached: Arc<AtomicBool>,
}

#[napi]
impl NativePool {
    /// Creates (or, with `shared`, joins) a pool. No I/O happens here.
    #[napi(factory)]
    pub fn open(config_json: String, shared: bool) -> Result<Self> {
        let pool = if shared {
            let mut registry = SHARED.lock();
            registry.retain(|_, weak| weak.strong_count() > 0);
            match registry.get(&config_json).and_then(Weak::upgrade).filter(|p| !p.is_closed()) {
                Some(pool) => pool,
                None => {
                    let pool = Pool::new(PoolConfig::from_json(&config_json).map_err(config_error)?).map_err(config_error)?;
                    registry.insert(config_json, Arc::downgrade(&pool));
                    pool
                }
            }
        } else {
            Pool::new(PoolConfig::from_json(&config_json).map_err(config_error)?).map_err(config_error)?
        };
        pool.users.fetch_add(1, Ordering::SeqCst);
        Ok(Self { pool, detached: Arc::new(AtomicBool::new(false)) })
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
        Ok(NativeHandler { group, lease: Arc::new(tokio::sync::Mutex::new(None)), released: Arc::new(AtomicBool::new(false)) })
    }

    /// One statement on any connection of the group, released right after.
    #[napi(ts_return_type = "Promise<Buffer>")]
    pub fn query<'env>(&self, env: &'env Env, group: u32, sql: String, params: Buffer) -> Result<PromiseRaw<'env, Buffer>> {
        let group = self.group(group)?;
        let params = params.to_vec();
        env.spawn_future(async move {
            let mut lease = group.acquire().await?;
            let out = lease.query(&sql, &params, true).await?;
            drop(lease);
            Ok(Buffer::from(out))
        })
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

/// A scoped checkout. Statements on it run one after another on one connection.
#[napi]
pub struct NativeHandler {
    group: Arc<Group>,
    lease: Arc<tokio::sync::Mutex<Option<Lease>>>,
    released: Arc<AtomicBool>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Lease>>>;

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
    /// Takes the connection now instead of at the first statement.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn acquire<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, ()>> {
        let (group, slot, released) = (self.group.clone(), self.lease.clone(), self.released.clone());
        env.spawn_future(async move {
            leased(&group, &slot, &released).await?;
            Ok(())
        })
    }

    /// Runs one statement.
    #[napi(ts_return_type = "Promise<Buffer>")]
    pub fn query<'env>(&self, env: &'env Env, sql: String, params: Buffer) -> Result<PromiseRaw<'env, Buffer>> {
        let (group, slot, released) = (self.group.clone(), self.lease.clone(), self.released.clone());
        let params = params.to_vec();
        env.spawn_future(async move {
            let mut guard = leased(&group, &slot, &released).await?;
            let lease = guard.as_mut().ok_or(PoolError::Closed)?;
            Ok(Buffer::from(lease.query(&sql, &params, false).await?))
        })
    }

    /// Commits the open transaction (a no-op without one).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn commit<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, ()>> {
        let slot = self.lease.clone();
        env.spawn_future(async move {
            let mut guard = slot.lock().await;
            match guard.as_mut() {
                Some(lease) => Ok(lease.commit().await?),
                None => Ok(()),
            }
        })
    }

    /// Rolls back the open transaction (a no-op without one).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn rollback<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, ()>> {
        let slot = self.lease.clone();
        env.spawn_future(async move {
            let mut guard = slot.lock().await;
            match guard.as_mut() {
                Some(lease) => Ok(lease.rollback().await?),
                None => Ok(()),
            }
        })
    }

    /// Whether a transaction is open right now.
    #[napi(getter)]
    pub fn in_transaction(&self) -> bool {
        self.lease.try_lock().map(|g| g.as_ref().is_some_and(Lease::in_transaction)).unwrap_or(true)
    }

    /// Returns the connection, rolling back an open transaction first. Idempotent.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn release<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, ()>> {
        let slot = self.lease.clone();
        self.released.store(true, Ordering::SeqCst);
        env.spawn_future(async move {
            let mut guard = slot.lock().await;
            if let Some(mut lease) = guard.take() {
                if lease.in_transaction() {
                    let _ = tokio::time::timeout(Duration::from_secs(5), lease.rollback()).await;
                }
                drop(lease);
            }
            Ok(())
        })
    }
}
