//! Rust core of `pgdbpool` for Node.js: a PostgreSQL pool over several endpoints, exposed
//! through napi-rs. See SPEC.md and README.md at the repository root.

#![deny(unsafe_code)]

mod balancer;
mod bindings;
mod config;
mod conn;
mod endpoint;
mod error;
mod events;
mod pool;
mod protocol;
mod role;
#[cfg(test)]
mod server_tests;

pub use bindings::{NativeHandler, NativePool};
