//! No panic crosses N-API: the guards every entry point runs under, and the test hook that
//! provokes panics on purpose.

use std::panic::AssertUnwindSafe;
use std::sync::LazyLock;

use napi::Result;

use crate::error::PoolError;

/// Runs a synchronous entry point; a panic becomes an `INTERNAL` error instead of crossing N-API.
pub(super) fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(PoolError::from_panic(what, &*payload).into()),
    }
}

/// Runs `f`, which must not fail; a panic is swallowed (for calls whose caller cannot act on an
/// error: finalizers, cleanup hooks, best-effort requests).
pub(super) fn quietly(f: impl FnOnce()) {
    let _ = std::panic::catch_unwind(AssertUnwindSafe(f));
}

/// Set (`PGDBPOOL_TEST_HOOKS=1` in the environment at load) to let the tests provoke panics.
static TEST_HOOKS: LazyLock<bool> = LazyLock::new(|| std::env::var_os("PGDBPOOL_TEST_HOOKS").is_some_and(|v| v == "1"));

/// Test hook: panics where a statement's text asks for it — `pgdbpool:panic-sync` while the
/// submission is read (`sync`), `pgdbpool:panic` inside the operation's task — so that
/// `__test__/panic.test.js` can check that no panic crosses N-API. Off unless
/// `PGDBPOOL_TEST_HOOKS=1` was set when the addon was loaded.
pub(super) fn test_panic(sql: &[u8], sync: bool) {
    if !*TEST_HOOKS {
        return;
    }
    let has = |marker: &[u8]| sql.windows(marker.len()).any(|w| w == marker);
    let sync_marker = has(b"pgdbpool:panic-sync");
    if sync_marker == sync && (sync || has(b"pgdbpool:panic")) {
        panic!("test hook: a panic on purpose");
    }
}
