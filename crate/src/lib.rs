//! Rust core of `pgdbpool` for Node.js: a PostgreSQL pool over several endpoints, exposed
//! through napi-rs. See SPEC.md and README.md at the repository root.

#![deny(unsafe_code)]

mod balancer;
mod bindings;
mod config;
mod conn;
mod endpoint;
mod error;
mod oneshot;
mod pool;
mod protocol;

pub use bindings::NativePool;

/// One tokio worker thread: a connection's task and the queries waiting on it then run on the
/// same thread, so tokio-postgres's internal channel hops cost no cross-thread wake-ups. The
/// JS thread and the PostgreSQL backends use the other cores.
#[napi_derive::module_init]
fn init_runtime() {
    if let Ok(rt) = tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("pgdbpool").enable_all().build() {
        napi::bindgen_prelude::create_custom_tokio_runtime(rt);
    }
}
