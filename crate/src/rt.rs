//! Where the core's tasks run, and how it survives that runtime going away.
//!
//! napi-rs owns the tokio runtime (ours, handed over in `lib.rs`) and shuts it down when the
//! last JS environment that loaded the addon is torn down — the end of the main script, the
//! `worker.terminate()` of the only thread that used the addon, an Electron renderer reload —
//! and then its own `spawn` panics. Teardown still drops leases, sessions and pools after that
//! (finalizers run after the shutdown), and a panic there, inside an `extern "C"` finalizer,
//! aborted the process. So every task of the core is spawned through [`spawn`] on a handle kept
//! here: on a runtime that has shut down, tokio drops the future instead of running it, and the
//! future's own drop guards (see `pool::lease::Returning`, `bindings::completions::Settle`) do what it would have
//! done, or at least free what it held.

use std::future::Future;

use parking_lot::RwLock;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

static HANDLE: RwLock<Option<Handle>> = RwLock::new(None);

/// Remembers the runtime the core spawns on.
pub(crate) fn set(handle: Handle) {
    *HANDLE.write() = Some(handle);
}

/// Takes napi-rs's current runtime as the one to spawn on. After the last environment shut the
/// previous runtime down, napi-rs starts a new one for the next environment (a restarted worker,
/// a reloaded Electron renderer); every pool is created on a JS thread whose environment is
/// alive, so calling this from the pool constructor always finds the live one.
pub(crate) fn adopt_napi_runtime() {
    // napi-rs panics when it has no runtime at all, which cannot happen while an environment
    // is alive; the guard only keeps that impossible case from crossing N-API.
    let current = std::panic::catch_unwind(|| napi::bindgen_prelude::within_runtime_if_available(|| Handle::try_current().ok()));
    if let Ok(Some(handle)) = current {
        set(handle);
    }
}

/// Spawns `future` on the core's runtime. When that runtime has shut down (or there is none),
/// the future is dropped without running; nothing panics.
pub(crate) fn spawn<F>(future: F) -> Option<JoinHandle<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    // From inside a task: the runtime it runs on (no lock; also right while the handle above
    // is being replaced).
    if let Ok(handle) = Handle::try_current() {
        return Some(handle.spawn(future));
    }
    let handle = HANDLE.read().clone();
    match handle {
        Some(handle) => Some(handle.spawn(future)),
        None => {
            drop(future);
            None
        }
    }
}

/// Runs `f` inside the core's runtime context (for timers and spawns of futures polled on a JS
/// thread, see `jsloop`); outside any when there is none.
pub(crate) fn within<R>(f: impl FnOnce() -> R) -> R {
    let handle = HANDLE.read().clone();
    match handle {
        Some(handle) => {
            let _entered = handle.enter();
            f()
        }
        None => f(),
    }
}
