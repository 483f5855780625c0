//! Process-wide tables of the bindings: the cores of live JS pool objects by number, the pools
//! shared by worker threads, who hears each pool's lifecycle events, and the JS environment
//! each core belongs to.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Weak};

use napi::{Env, Result};
use parking_lot::{Mutex, RwLock};

use super::completions::Completions;
use super::core::Core;
use super::guard::quietly;
use crate::config::PoolConfig;
use crate::error::PoolError;
use crate::pool::Pool;

/// The cores of live JS pool objects, by number. `try_acquire_handler` and `release_handler`
/// run on every checkout, and napi-rs registers a borrow of the class instance on every method
/// call, a sixth of a whole checkout/release cycle; a number costs a read lock.
static CORES: LazyLock<RwLock<Vec<Option<Arc<Core>>>>> = LazyLock::new(|| RwLock::new(Vec::new()));

/// Gives `core` a number.
pub(super) fn register(core: Arc<Core>) -> u32 {
    let mut cores = CORES.write();
    let id = cores.iter().position(Option::is_none).unwrap_or_else(|| {
        cores.push(None);
        cores.len() - 1
    });
    cores[id] = Some(core);
    id as u32
}

/// Frees number `id`.
pub(super) fn unregister(id: u32) {
    if let Some(entry) = CORES.write().get_mut(id as usize) {
        *entry = None;
    }
}

/// Runs `f` on core number `id`, if it is registered.
pub(super) fn with_core<T>(id: u32, f: impl FnOnce(&Core) -> T) -> Option<T> {
    CORES.read().get(id as usize).and_then(Option::as_ref).map(|core| f(core))
}

/// `threaded` pools by normalized config, shared by every worker thread of the process.
static SHARED: LazyLock<Mutex<HashMap<String, Weak<Pool>>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// A new pool for `config_json`, or with `shared`, the open one another thread made for it.
pub(super) fn pool_for(config_json: String, shared: bool) -> Result<Arc<Pool>> {
    if !shared {
        return build_pool(&config_json);
    }
    let mut registry = SHARED.lock();
    registry.retain(|_, weak| weak.strong_count() > 0);
    if let Some(pool) = registry.get(&config_json).and_then(Weak::upgrade).filter(|p| !p.is_closed()) {
        return Ok(pool);
    }
    let pool = build_pool(&config_json)?;
    registry.insert(config_json, Arc::downgrade(&pool));
    Ok(pool)
}

fn build_pool(config_json: &str) -> Result<Arc<Pool>> {
    let config = PoolConfig::from_json(config_json).map_err(PoolError::Config)?;
    Ok(Pool::new(config).map_err(PoolError::Config)?)
}

/// The JS pool objects of each native pool (by address), which all hear its lifecycle events.
static LISTENERS: LazyLock<Mutex<HashMap<usize, Vec<Weak<Completions>>>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Delivers `pool`'s lifecycle events to `completions` (and to every other JS pool object of
/// it: with `threaded`, each worker thread hears every event).
pub(super) fn listen(pool: &Arc<Pool>, completions: &Arc<Completions>) {
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

thread_local! {
    /// The cores created in this thread's JS environment (one environment per JS thread at a
    /// time), and whether its cleanup hook is installed.
    static ENV_CORES: RefCell<Option<Vec<Weak<Core>>>> = const { RefCell::new(None) };
}

/// Makes sure `core` lets go of its handlers when its JS environment is torn down.
pub(super) fn watch_environment(env: &Env, core: &Arc<Core>) -> Result<()> {
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
