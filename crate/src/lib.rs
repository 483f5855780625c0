//! Rust core of `pgdbpool` for Node.js: a PostgreSQL pool over several endpoints, exposed
//! through napi-rs (see `bindings`). README.md at the repository root describes the behaviour.

#![deny(unsafe_code)]
#![warn(rust_2018_idioms, unreachable_pub, missing_debug_implementations, clippy::all)]

mod balancer;
mod bindings;
mod codec;
mod config;
mod conn;
mod driver;
mod endpoint;
mod error;
mod events;
mod jsloop;
mod oneshot;
mod pgcompat;
mod pgtext;
mod pool;
mod quiet;
mod role;
mod rt;
#[cfg(test)]
mod server_tests;
mod status;

pub use bindings::{js_thread_statements, release_handler, set_max_result_bytes, try_acquire_handler, NativePool};

/// Half the cores for tokio workers (at least 1, at most 4): on 2 cores a single worker, so a
/// connection's task and the queries waiting on it run on one thread and tokio-postgres's
/// internal channel hops cost no cross-thread wake-ups, while the JS thread and the PostgreSQL
/// backends use the other core.
#[napi_derive::module_init]
fn init_runtime() {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers = (cores / 2).clamp(1, 4);
    if let Ok(rt) = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).thread_name("pgdbpool").enable_all().build() {
        rt::set(rt.handle().clone());
        napi::bindgen_prelude::create_custom_tokio_runtime(rt);
    }
}
